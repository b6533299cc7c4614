"""Leaving a list is recorded, not erased: the subscription stays, marked
with when and how the contact left, and nothing that reads lists counts
them as on it (campaigns, autoresponders, segments, counts, exports,
the contact's page); only the contact (or the API with their new
consent) puts them back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import MARKETER
from campaigns import services
from campaigns.audience import segment_contacts
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Segment, Subscription
from campaigns.preferences import subscriptions_leave
from tests.campaigns.cast import login_as
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def news() -> ContactList:
    """user0..user3 on News; user1 has left it through the page."""
    news = make_audience(4, name="News")
    subscriptions_leave(
        contact=Contact.objects.get(email="user1@example.org"),
        list_ids=[news.pk],
        via=Subscription.Via.PREFERENCES,
    )
    return news


def emails(contacts: Any) -> list[str]:
    return sorted(contacts.values_list("email", flat=True))


def test_a_campaign_to_the_list_makes_no_item_for_who_left(news: ContactList) -> None:
    for rules in (False, True):  # plain lists, and lists with exclusions (the ORM path)
        campaign = make_campaign(dispatcher=make_dispatcher(), lists=[news])
        if rules:
            campaign.exclude_lists.set([ContactList.objects.create(name="Nobody")])
        services.campaign_schedule(campaign=campaign)
        services.items_generate(page_size=2)
        mailed = CampaignItem.objects.filter(campaign=campaign).values_list("contact__email")
        assert sorted(e for (e,) in mailed) == [
            "user0@example.org",
            "user2@example.org",
            "user3@example.org",
        ]


def test_a_segments_list_rules_read_only_live_subscriptions(news: ContactList) -> None:
    on_news = Segment.objects.create(name="On news")
    on_news.lists.set([news])
    off_news = Segment.objects.create(name="Off news")
    off_news.not_lists.set([news])

    assert "user1@example.org" not in emails(segment_contacts(on_news))
    assert emails(segment_contacts(off_news)) == ["user1@example.org"]


def test_a_welcome_autoresponder_skips_who_joined_and_left_before_it_was_due(
    news: ContactList,
) -> None:
    welcome = make_campaign(dispatcher=make_dispatcher(), lists=[news])
    Campaign.objects.filter(pk=welcome.pk).update(
        kind=Campaign.Kind.AUTORESPONDER, autoresponder_delay=timedelta(hours=1)
    )
    welcome.refresh_from_db()
    services.campaign_schedule(campaign=welcome)
    stayed, went = (Contact.objects.create(email=f"{n}@new.example") for n in ("stayed", "went"))
    for contact in (stayed, went):
        Subscription.objects.create(contact=contact, contact_list=news)
    subscriptions_leave(contact=went, list_ids=[news.pk], via=Subscription.Via.PREFERENCES)

    assert services.autoresponders_process(now=timezone.now() + timedelta(hours=2)) == 1
    assert CampaignItem.objects.get(campaign=welcome).contact == stayed


def test_the_list_page_counts_subscribers_and_those_who_left(
    client: Client, news: ContactList
) -> None:
    login_as(client, MARKETER)
    page = client.get(reverse("admin:campaigns_contactlist_changelist")).content.decode()
    assert '<td class="field-subscribers">3</td>' in page
    assert '<td class="field-unsubscribed">1</td>' in page


def test_the_contact_page_shows_when_and_how_they_left_each_list(
    client: Client, news: ContactList
) -> None:
    login_as(client, MARKETER)
    contact = Contact.objects.get(email="user1@example.org")
    Subscription.objects.create(
        contact=contact, contact_list=ContactList.objects.create(name="VIP")
    )
    left_at = Subscription.objects.get(contact=contact, contact_list=news).unsubscribed_at

    page = client.get(reverse("admin:campaigns_contact_change", args=[contact.pk])).content.decode()

    assert f"Unsubscribed on {left_at:%Y-%m-%d %H:%M} (Manage subscriptions page)" in page
    assert "Subscribed" in page


def test_removing_a_list_in_the_admin_records_it_as_left(client: Client, news: ContactList) -> None:
    login_as(client, MARKETER)
    contact = Contact.objects.get(email="user0@example.org")
    row = Subscription.objects.get(contact=contact)
    url = reverse("admin:campaigns_contact_change", args=[contact.pk])
    form = {
        "email": contact.email,
        "status": contact.status,
        "attributes": "{}",
        "subscription_set-TOTAL_FORMS": "1",
        "subscription_set-INITIAL_FORMS": "1",
        "subscription_set-0-id": row.pk,
        "subscription_set-0-contact": contact.pk,
        "subscription_set-0-contact_list": news.pk,
        "subscription_set-0-source": "",
        "subscription_set-0-DELETE": "on",
    }

    response = client.post(url, form)

    assert response.status_code == 302, response.content.decode()[:2000]
    row.refresh_from_db()
    assert row.unsubscribed_at is not None and row.unsubscribed_via == Subscription.Via.ADMIN


def test_the_contact_list_filter_and_export_leave_out_who_left(
    client: Client, news: ContactList
) -> None:
    login_as(client, MARKETER)
    page = client.get(
        reverse("admin:campaigns_contact_changelist") + f"?list={news.pk}"
    ).content.decode()
    assert "user0@example.org" in page and "user1@example.org" not in page

    export = client.get(reverse("campaigns:contact_export") + f"?list={news.pk}")
    body = b"".join(export.streaming_content).decode()
    assert "user0@example.org" in body and "user1@example.org" not in body
