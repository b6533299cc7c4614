"""Segments: saved filters over status, custom attributes and list
membership, with a live count, usable as a campaign's audience with
exclusions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.roles import MARKETER, OPERATOR
from campaigns.audience import segment_contacts, segment_count
from campaigns.models import (
    Campaign,
    CampaignItem,
    Contact,
    ContactList,
    Segment,
    Subscription,
    Suppression,
)
from campaigns.services import campaign_schedule, items_generate
from tests.campaigns.cast import login_as
from tests.helpers import make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def person(email: str, *, lists: tuple[ContactList, ...] = (), **fields: Any) -> Contact:
    contact = Contact.objects.create(email=email, **fields)
    for contact_list in lists:
        Subscription.objects.create(contact=contact, contact_list=contact_list)
    return contact


@pytest.fixture
def cast() -> dict[str, Any]:
    news = ContactList.objects.create(name="News")
    vip = ContactList.objects.create(name="VIP")
    staff = ContactList.objects.create(name="Staff")
    person("gold@example.org", lists=(news,), attributes={"plan": "gold", "city": "Paris"})
    person("gold2@example.org", lists=(news, vip), attributes={"plan": "gold", "age": 40})
    person("silver@example.org", lists=(news,), attributes={"plan": "silver", "city": "Lyon"})
    person("bare@example.org", lists=(news,))
    person(
        "gone@example.org",
        lists=(news,),
        status=Contact.Status.UNSUBSCRIBED,
        attributes={"plan": "gold"},
    )
    person("boss@example.org", lists=(staff,), attributes={"plan": "gold"})
    return {"news": news, "vip": vip, "staff": staff}


def members(segment: Segment) -> list[str]:
    return sorted(segment_contacts(segment).values_list("email", flat=True))


def segment(
    name: str, *, lists: tuple[ContactList, ...] = (), not_lists: tuple = (), **fields: Any
) -> Segment:
    made = Segment.objects.create(name=name, **fields)
    made.full_clean()
    made.lists.set(lists)
    made.not_lists.set(not_lists)
    return made


def test_a_segment_filters_by_status_attributes_and_lists(cast: dict[str, Any]) -> None:
    gold = segment(
        "Gold",
        statuses=["active"],
        conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}],
    )
    assert members(gold) == ["boss@example.org", "gold2@example.org", "gold@example.org"]

    gold_news_not_vip = segment(
        "Gold news",
        lists=(cast["news"],),
        not_lists=(cast["vip"],),
        conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}],
    )
    assert members(gold_news_not_vip) == ["gold@example.org", "gone@example.org"]

    no_plan = segment("No plan", conditions=[{"attribute": "plan", "op": "missing"}])
    assert members(no_plan) == ["bare@example.org"]

    city = segment(
        "P cities",
        conditions=[
            {"attribute": "city", "op": "contains", "value": "ari"},
            {"attribute": "plan", "op": "not_equals", "value": "silver"},
        ],
    )
    assert members(city) == ["gold@example.org"]
    assert segment_count(segment=city) == 1

    aged = segment("Aged", conditions=[{"attribute": "age", "op": "equals", "value": 40}])
    assert members(aged) == ["gold2@example.org"]  # typed: 40, not "40"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"statuses": ["asleep"]}, "Statuses must be a list of"),
        ({"conditions": [{"attribute": "plan", "op": "like", "value": "g"}]}, "unknown operator"),
        ({"conditions": [{"attribute": "a__b", "op": "exists"}]}, "is not an attribute name"),
        ({"conditions": [{"attribute": "x'); DROP", "op": "exists"}]}, "not an attribute name"),
        ({"conditions": [{"attribute": "plan", "op": "equals"}]}, "equals needs a value"),
        ({"conditions": [{"attribute": "plan", "op": "contains", "value": 3}]}, "text value"),
        ({"conditions": "plan=gold"}, "Conditions must be a list"),
    ],
)
def test_rules_the_filter_cannot_apply_are_refused(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Segment(name="Bad", **fields).full_clean()
    assert error in " ".join(refused.value.messages)


def test_a_campaign_sends_to_lists_and_segments_minus_exclusions(cast: dict[str, Any]) -> None:
    gold = segment("Gold", conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}])
    paris = segment("Paris", conditions=[{"attribute": "city", "op": "equals", "value": "Paris"}])
    Suppression.objects.create(pattern="boss@example.org")
    extra = person("extra@example.org", lists=(cast["vip"],))
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[cast["vip"]])
    campaign.segments.set([gold])
    campaign.exclude_segments.set([paris])
    campaign_schedule(campaign=campaign)

    items_generate(page_size=2)  # several pages, by contact id

    items = dict(
        CampaignItem.objects.filter(campaign=campaign).values_list("contact__email", "status")
    )
    assert items == {
        "gold2@example.org": "pending",  # on VIP and gold
        extra.email: "pending",  # on VIP
        "gone@example.org": "skipped",  # gold but unsubscribed
        "boss@example.org": "skipped",  # gold but suppressed
    }  # gold@example.org is gold, but in Paris: excluded
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING


def test_an_excluded_list_wins_over_a_list(cast: dict[str, Any]) -> None:
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[cast["news"]])
    campaign.exclude_lists.set([cast["vip"]])
    campaign_schedule(campaign=campaign)

    items_generate()

    emails = set(
        CampaignItem.objects.filter(campaign=campaign).values_list("contact__email", flat=True)
    )
    assert emails == {
        "gold@example.org",
        "silver@example.org",
        "bare@example.org",
        "gone@example.org",
    }


def test_the_draft_page_counts_the_audience_with_segments_and_exclusions(
    client: Client, cast: dict[str, Any]
) -> None:
    gold = segment("Gold", conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}])
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[])
    campaign.segments.set([gold])
    campaign.exclude_lists.set([cast["staff"]])
    login_as(client, MARKETER)

    html = client.get(reverse("campaigns:campaign_report", args=[campaign.pk])).content.decode()

    counts = dict(re.findall(r'data-audience="(\w+)">(\d+)<', html))
    assert counts == {"total": "3", "suppressed": "1", "receiving": "2"}


def test_a_campaign_with_no_list_and_no_segment_cannot_be_scheduled() -> None:
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[])
    with pytest.raises(ValidationError, match="Choose at least one list or segment"):
        campaign_schedule(campaign=campaign)


def test_a_marketer_sees_a_segments_live_count_and_an_operator_cannot(
    client: Client, cast: dict[str, Any]
) -> None:
    gold = segment("Gold", conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}])
    url = reverse("admin:campaigns_segment_change", args=[gold.pk])
    login_as(client, MARKETER)
    assert "4 contact(s) match today." in client.get(url).content.decode()
    person("new@example.org", attributes={"plan": "gold"})
    assert "5 contact(s) match today." in client.get(url).content.decode()

    client.logout()
    login_as(client, OPERATOR)
    assert client.get(url).status_code == 403


def test_a_marketer_builds_a_segment_in_the_admin_and_bad_rules_are_refused(
    client: Client, cast: dict[str, Any]
) -> None:
    login_as(client, MARKETER)
    url = reverse("admin:campaigns_segment_add")
    data = {
        "name": "Gold on news",
        "description": "",
        "statuses": ["active"],
        "lists": [cast["news"].pk],
        "conditions": '[{"attribute": "plan", "op": "equals", "value": "gold"}]',
    }

    refused = client.post(url, {**data, "conditions": '[{"attribute": "plan", "op": "~"}]'})
    assert refused.status_code == 200 and "unknown operator" in refused.content.decode()
    assert not Segment.objects.exists()

    client.post(url, data)
    made = Segment.objects.get()
    assert made.statuses == ["active"]
    assert members(made) == ["gold2@example.org", "gold@example.org"]
