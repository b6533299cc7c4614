"""Segments by engagement (opened, clicked, was sent, and their negations,
of any campaign or one, ever or in the last N days), read from what the
tracking recorded; and autoresponders limited to a segment."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import MARKETER
from campaigns import services
from campaigns.audience import segment_contacts
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Segment, Subscription
from campaigns.tracking import tracking_key, tracking_record_click, tracking_record_open
from tests.campaigns.cast import login_as
from tests.helpers import make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sent(campaign: Campaign, email: str, *, days_ago: int = 1) -> CampaignItem:
    contact, _ = Contact.objects.get_or_create(email=email)
    return CampaignItem.objects.create(
        campaign=campaign,
        contact=contact,
        status=S.SENT,
        sent_at=timezone.now() - timedelta(days=days_ago),
    )


def opened(item: CampaignItem, *, days_ago: int = 0, machine: bool = False) -> None:
    tracking_record_open(key=tracking_key(item.token), user_agent="Mail", machine=machine)
    if days_ago:
        CampaignItem.objects.filter(pk=item.pk).update(
            opened_at=timezone.now() - timedelta(days=days_ago)
        )


def clicked(item: CampaignItem) -> None:
    link = item.campaign.links.create(url="https://example.org/offer")
    tracking_record_click(
        key=tracking_key(item.token), link_id=link.pk, user_agent="Mail", machine=False
    )


@pytest.fixture
def history() -> dict[str, Campaign]:
    """Two campaigns and what six people did with them.

    reader:   opened spring (2 days ago) and clicked it
    old:      was sent spring 200 days ago, opened it 190 days ago
    ignorer:  was sent spring and summer, opened neither
    scanned:  sent summer; only a link scanner fetched it (not an open)
    summer:   opened summer only
    never:    no item at all
    """
    dispatcher = make_dispatcher()
    spring = make_campaign(dispatcher=dispatcher, lists=[])
    summer = make_campaign(dispatcher=dispatcher, lists=[])
    item = sent(spring, "reader@example.org", days_ago=2)
    opened(item)
    clicked(item)
    opened(sent(spring, "old@example.org", days_ago=200), days_ago=190)
    sent(spring, "ignorer@example.org", days_ago=3)
    sent(summer, "ignorer@example.org", days_ago=1)
    opened(sent(summer, "scanned@example.org"), machine=True)
    opened(sent(summer, "summer@example.org"))
    Contact.objects.create(email="never@example.org")
    return {"spring": spring, "summer": summer}


def members(**rule: Any) -> set[str]:
    made = Segment(name=f"Rule {Segment.objects.count()}", engagement=[rule])
    made.full_clean()
    made.save()
    return {email.split("@")[0] for email in segment_contacts(made).values_list("email", flat=True)}


def test_opened_and_clicked_any_or_one_campaign_ever_or_lately(
    history: dict[str, Campaign],
) -> None:
    spring = history["spring"].pk
    assert members(activity="opened") == {"reader", "old", "summer"}  # the scanner is no reader
    assert members(activity="opened", days=30) == {"reader", "summer"}
    assert members(activity="opened", campaign=spring) == {"reader", "old"}
    assert members(activity="clicked") == {"reader"}
    assert members(activity="clicked", campaign=history["summer"].pk) == set()


def test_never_opened_and_did_not_open_lately(history: dict[str, Campaign]) -> None:
    assert members(activity="not_opened") == {"ignorer", "scanned", "never"}
    assert members(activity="not_opened", days=30) == {"ignorer", "scanned", "never", "old"}
    assert members(activity="not_clicked", days=30) == {
        "old",
        "ignorer",
        "scanned",
        "summer",
        "never",
    }


def test_was_sent_but_did_not_open(history: dict[str, Campaign]) -> None:
    # Mailed lately and opened nothing lately: the ones to win back.
    assert members(activity="sent_not_opened", days=30) == {"ignorer", "scanned"}
    assert members(activity="sent", days=30) == {"reader", "ignorer", "scanned", "summer"}
    assert members(activity="sent_not_opened", campaign=history["spring"].pk) == {"ignorer"}


def test_engagement_rules_combine_with_the_others(history: dict[str, Campaign]) -> None:
    news = ContactList.objects.create(name="News")
    for email in ("reader@example.org", "ignorer@example.org"):
        Subscription.objects.create(contact=Contact.objects.get(email=email), contact_list=news)
    made = Segment.objects.create(
        name="Engaged readers of news",
        engagement=[{"activity": "opened", "days": 30}, {"activity": "clicked"}],
    )
    made.lists.set([news])
    assert list(segment_contacts(made).values_list("email", flat=True)) == ["reader@example.org"]


@pytest.mark.parametrize(
    ("engagement", "error"),
    [
        ([{"activity": "read"}], "Engagement rule 1: unknown activity 'read'; use one of opened"),
        ([{"activity": "opened", "days": 0}], "days must be a whole number from 1 to 3650"),
        ([{"activity": "opened", "days": "30"}], "days must be a whole number"),
        ([{"activity": "opened", "days": True}], "days must be a whole number"),
        ([{"activity": "clicked", "campaign": 999999}], "there is no campaign 999999"),
        ([{"activity": "opened", "since": "2024"}], "unknown field(s) since"),
        (["opened"], "must be an object with an activity"),
        ({"activity": "opened"}, "Engagement rules must be a list"),
    ],
)
def test_engagement_rules_the_filter_cannot_apply_are_refused(engagement: Any, error: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Segment(name="Bad", engagement=engagement).full_clean()
    assert error in " ".join(refused.value.message_dict["engagement"])


def test_a_marketer_builds_an_engagement_segment_in_the_admin_and_sees_its_count(
    client: Client, history: dict[str, Campaign]
) -> None:
    login_as(client, MARKETER)
    url = reverse("admin:campaigns_segment_add")
    data = {"name": "Lately engaged", "description": "", "conditions": "[]"}

    refused = client.post(url, {**data, "engagement": '[{"activity": "opened", "days": -1}]'})
    assert refused.status_code == 200
    assert "days must be a whole number from 1 to 3650" in refused.content.decode()
    assert not Segment.objects.exists()

    client.post(url, {**data, "engagement": '[{"activity": "opened", "days": 30}]'})
    made = Segment.objects.get()
    page = client.get(reverse("admin:campaigns_segment_change", args=[made.pk])).content.decode()
    assert "2 contact(s) match today." in page
    opened(
        CampaignItem.objects.get(contact__email="ignorer@example.org", campaign=history["summer"])
    )
    page = client.get(reverse("admin:campaigns_segment_change", args=[made.pk])).content.decode()
    assert "3 contact(s) match today." in page


def test_a_campaign_to_an_engagement_segment_pages_its_audience(
    history: dict[str, Campaign],
) -> None:
    lately = Segment.objects.create(name="Lately", engagement=[{"activity": "sent", "days": 30}])
    win_back = make_campaign(dispatcher=make_dispatcher(), lists=[])
    win_back.segments.set([lately])
    Campaign.objects.filter(pk=win_back.pk).update(
        only_segment=Segment.objects.create(
            name="Not opening", engagement=[{"activity": "not_opened", "days": 30}]
        )
    )
    win_back.refresh_from_db()
    services.campaign_schedule(campaign=win_back)

    services.items_generate(page_size=1)

    mailed = CampaignItem.objects.filter(campaign=win_back).values_list("contact__email", flat=True)
    assert sorted(mailed) == ["ignorer@example.org", "scanned@example.org"]


# --- autoresponders limited to a segment --------------------------------------


def autoresponder(contact_list: ContactList, only: Segment, **fields: Any) -> Campaign:
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[contact_list])
    Campaign.objects.filter(pk=campaign.pk).update(
        kind=Campaign.Kind.AUTORESPONDER, only_segment=only, **fields
    )
    campaign.refresh_from_db()
    services.campaign_schedule(campaign=campaign)
    return campaign


def test_a_welcome_autoresponder_answers_only_joiners_in_its_segment() -> None:
    trial = ContactList.objects.create(name="Trial")
    gold = Segment.objects.create(
        name="Gold", conditions=[{"attribute": "plan", "op": "equals", "value": "gold"}]
    )
    welcome = autoresponder(trial, gold, autoresponder_delay=timedelta(0))
    for email, plan in (("g1@example.org", "gold"), ("f1@example.org", "free")):
        contact = Contact.objects.create(email=email, attributes={"plan": plan})
        Subscription.objects.create(contact=contact, contact_list=trial)
    left = Contact.objects.create(email="g2@example.org", attributes={"plan": "gold"})
    Subscription.objects.create(
        contact=left, contact_list=trial, unsubscribed_at=timezone.now(), unsubscribed_via="api"
    )

    assert services.autoresponders_process(page_size=1) == 1
    assert services.autoresponders_process() == 0  # each contact once

    # The free one upgrades: now in the segment, answered once.
    Contact.objects.filter(email="f1@example.org").update(attributes={"plan": "gold"})
    assert services.autoresponders_process() == 1
    assert services.autoresponders_process() == 0
    mailed = CampaignItem.objects.filter(campaign=welcome).values_list("contact__email", flat=True)
    assert sorted(mailed) == ["f1@example.org", "g1@example.org"]


def test_a_date_autoresponder_answers_only_its_segment() -> None:
    members = ContactList.objects.create(name="Members")
    today = timezone.now().date().isoformat()
    for email, opened_any in (("a@example.org", True), ("b@example.org", False)):
        contact = Contact.objects.create(email=email, attributes={"birthday": today})
        Subscription.objects.create(contact=contact, contact_list=members)
        if opened_any:
            opened(sent(make_campaign(dispatcher=make_dispatcher(), lists=[]), email))
    readers = Segment.objects.create(name="Readers", engagement=[{"activity": "opened"}])
    birthday = autoresponder(
        members,
        readers,
        trigger=Campaign.Trigger.DATE_ATTRIBUTE,
        date_attribute="birthday",
        autoresponder_delay=None,
    )

    assert services.autoresponders_process() == 1
    assert services.autoresponders_process() == 0
    item = CampaignItem.objects.get(campaign=birthday)
    assert item.contact.email == "a@example.org"


def test_a_segment_limiting_a_campaign_cannot_be_deleted() -> None:
    trial = ContactList.objects.create(name="Trial")
    gold = Segment.objects.create(name="Gold")
    autoresponder(trial, gold, autoresponder_delay=timedelta(hours=1))
    with pytest.raises(ProtectedError):
        gold.delete()
