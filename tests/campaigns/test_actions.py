"""Campaign actions from the report page: each only in the statuses where
it makes sense and for the roles allowed; destructive ones name the count
before they act."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from campaigns.models import Campaign, CampaignItem, Contact, Subscription, Suppression
from tests.campaigns.cast import bulk_items, login_as
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
C = Campaign.Status


@pytest.fixture(autouse=True)
def fresh_cache(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()


def campaign_in(status: str, lists: list[Any] | None = None) -> Campaign:
    return make_campaign(dispatcher=make_dispatcher(), lists=lists or [], status=status)


def act(client: Client, campaign: Campaign, action: str, **data: str) -> Any:
    url = reverse("campaigns:campaign_action", args=[campaign.pk, action])
    return client.post(url, data, follow=True)


def status_of(campaign: Campaign) -> str:
    campaign.refresh_from_db()
    return campaign.status


def test_a_draft_shows_its_audience_and_suppressed_counts_before_scheduling(
    client: Client,
) -> None:
    news = make_audience(6, name="News")
    offers = make_audience(0, name="Offers")
    # Someone on both lists counts once.
    Subscription.objects.create(
        contact=Contact.objects.get(email="user0@example.org"), contact_list=offers
    )
    Contact.objects.filter(email="user1@example.org").update(status=Contact.Status.UNSUBSCRIBED)
    Suppression.objects.create(pattern="user2@example.org")
    other = Contact.objects.create(email="boss@blocked.example")
    Subscription.objects.create(contact=other, contact_list=offers)
    Suppression.objects.create(pattern="*@blocked.example")
    draft = campaign_in(C.DRAFT, [news, offers])
    login_as(client, MARKETER)

    html = client.get(reverse("campaigns:campaign_report", args=[draft.pk])).content.decode()

    counts = dict(re.findall(r'data-audience="(\w+)">(\d+)<', html))
    assert counts == {"total": "7", "suppressed": "3", "receiving": "4"}
    assert ">Schedule</button>" in html


def test_a_send_limit_caps_who_will_receive_it_before_scheduling(client: Client) -> None:
    draft = campaign_in(C.DRAFT, [make_audience(6)])
    Campaign.objects.filter(pk=draft.pk).update(send_limit=4)
    login_as(client, MARKETER)

    html = client.get(reverse("campaigns:campaign_report", args=[draft.pk])).content.decode()

    counts = dict(re.findall(r'data-audience="(\w+)">(\d+)<', html))
    assert counts == {"total": "6", "suppressed": "0", "receiving": "4"}
    assert "held to the send limit of 4" in html


def test_scheduling_at_a_time_in_a_chosen_time_zone(client: Client) -> None:
    draft = campaign_in(C.DRAFT, [make_audience(2)])
    login_as(client, MARKETER)

    response = act(client, draft, "schedule", when="2031-03-04T09:30", time_zone="America/New_York")

    assert "Scheduled to send" in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == C.SCHEDULED
    assert draft.scheduled_at == datetime(2031, 3, 4, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"when": "2001-01-01T09:00", "time_zone": "UTC"}, "That time is in the past"),
        ({"when": "tomorrow", "time_zone": "UTC"}, "Enter a valid date/time"),
        ({"when": "2031-01-01T09:00", "time_zone": "Mars/Olympus"}, "Select a valid choice"),
    ],
)
def test_a_bad_schedule_is_refused_and_changes_nothing(
    client: Client, data: dict[str, str], error: str
) -> None:
    draft = campaign_in(C.DRAFT, [make_audience(2)])
    login_as(client, MARKETER)

    response = act(client, draft, "schedule", **data)

    assert error in response.content.decode()
    assert status_of(draft) == C.DRAFT


def test_scheduling_with_no_list_says_so(client: Client) -> None:
    draft = campaign_in(C.DRAFT)
    login_as(client, MARKETER)

    response = act(client, draft, "schedule")

    assert "Choose at least one list" in response.content.decode()
    assert status_of(draft) == C.DRAFT


def test_unschedule_takes_a_scheduled_campaign_back_to_draft(client: Client) -> None:
    scheduled = campaign_in(C.SCHEDULED)
    login_as(client, MARKETER)

    act(client, scheduled, "unschedule")

    assert status_of(scheduled) == C.DRAFT
    assert scheduled.scheduled_at is None


@pytest.mark.parametrize(
    ("action", "status", "message"),
    [
        ("schedule", C.SENDING, "Cannot schedule a campaign that is sending; only draft"),
        ("unschedule", C.SENDING, "Cannot unschedule a campaign that is sending"),
        ("pause", C.COMPLETED, "Cannot pause a campaign that is completed"),
        ("resume", C.SENDING, "Cannot resume a campaign that is sending; only paused"),
        ("cancel", C.COMPLETED, "Cannot cancel a campaign that is completed"),
        ("reset_failed", C.DRAFT, "Cannot reset failed recipients of a campaign that is draft"),
        ("resend_all", C.SENDING, "Cannot resend a campaign that is sending"),
    ],
)
def test_an_action_where_it_makes_no_sense_is_refused_clearly(
    client: Client, action: str, status: str, message: str
) -> None:
    campaign = campaign_in(status)
    campaigns_before = Campaign.objects.count()
    login_as(client, ADMINISTRATOR)

    response = act(client, campaign, action, confirmed="yes")

    assert message in response.content.decode()
    assert status_of(campaign) == status
    assert Campaign.objects.count() == campaigns_before


def test_the_page_offers_only_the_actions_that_apply(client: Client) -> None:
    sending = campaign_in(C.SENDING)
    login_as(client, MARKETER)

    html = client.get(reverse("campaigns:campaign_report", args=[sending.pk])).content.decode()

    offered = set(re.findall(r"/actions/(\w+)/", html))
    assert offered == {"pause", "cancel", "duplicate", "reset_failed"}


def test_an_operator_pauses_and_resumes_but_may_not_cancel_or_duplicate(client: Client) -> None:
    sending = campaign_in(C.SENDING)
    Campaign.objects.filter(pk=sending.pk).update(audience_complete=True, started_at=timezone.now())
    login_as(client, OPERATOR)

    act(client, sending, "pause")
    assert status_of(sending) == C.PAUSED
    assert sending.paused_reason == "Paused by operator"
    act(client, sending, "resume")
    assert status_of(sending) == C.SENDING

    for action in ("cancel", "duplicate", "reset_failed", "resend_all", "schedule"):
        url = reverse("campaigns:campaign_action", args=[sending.pk, action])
        assert client.post(url, {"confirmed": "yes"}).status_code == 403
    assert status_of(sending) == C.SENDING
    assert Campaign.objects.count() == 1


def test_cancel_asks_first_naming_the_unsent_count(client: Client) -> None:
    sending = campaign_in(C.SENDING)
    Campaign.objects.filter(pk=sending.pk).update(audience_complete=True)
    bulk_items(sending, 7, status=S.PENDING, prefix="p")
    bulk_items(sending, 2, status=S.DEFERRED, prefix="d")
    bulk_items(sending, 5, status=S.SENT, prefix="s", sent_at=timezone.now())
    login_as(client, MARKETER)
    url = reverse("campaigns:campaign_action", args=[sending.pk, "cancel"])

    asked = client.get(url).content.decode()
    assert "9 unsent messages will not be sent" in asked
    assert client.post(url).status_code == 200  # no confirmation: asked again
    assert status_of(sending) == C.SENDING

    client.post(url, {"confirmed": "yes"})
    assert status_of(sending) == C.CANCELLED


def test_cancelling_before_the_audience_is_paged_in_names_the_people_left(
    client: Client,
) -> None:
    audience = make_audience(6)
    Suppression.objects.create(pattern="user5@example.org")
    scheduled = campaign_in(C.SCHEDULED, [audience])
    login_as(client, MARKETER)
    url = reverse("campaigns:campaign_action", args=[scheduled.pk, "cancel"])

    assert "5 recipients will not get it" in client.get(url).content.decode()
    client.post(url, {"confirmed": "yes"})

    assert status_of(scheduled) == C.CANCELLED


def test_reset_failed_names_the_count_and_sends_a_completed_campaign_again(
    client: Client,
) -> None:
    done = campaign_in(C.COMPLETED)
    bulk_items(done, 4, status=S.SENT, prefix="s", sent_at=timezone.now())
    bulk_items(done, 3, status=S.FAILED, prefix="f", smtp_code=451, smtp_response="try later")
    Campaign.objects.filter(pk=done.pk).update(total_count=7, sent_count=4, failed_count=3)
    login_as(client, MARKETER)
    url = reverse("campaigns:campaign_action", args=[done.pk, "reset_failed"])

    assert "3 failed recipients go back to unsent" in client.get(url).content.decode()
    response = client.post(url, {"confirmed": "yes"}, follow=True)

    assert "3 failed recipient(s) reset to unsent" in response.content.decode()
    assert status_of(done) == C.SENDING
    reset = CampaignItem.objects.filter(campaign=done, contact__email__startswith="f")
    assert set(reset.values_list("status", "attempts", "smtp_response")) == {(S.PENDING, 0, "")}
    assert CampaignItem.objects.filter(campaign=done, status=S.SENT).count() == 4


def test_reset_failed_with_nothing_failed_says_so(client: Client) -> None:
    sending = campaign_in(C.SENDING)
    bulk_items(sending, 2, status=S.SENT, sent_at=timezone.now())
    login_as(client, MARKETER)

    response = act(client, sending, "reset_failed", confirmed="yes")

    assert "No failed recipient to reset" in response.content.decode()


def test_resend_to_all_names_the_audience_and_schedules_a_new_campaign(client: Client) -> None:
    audience = make_audience(5)
    Suppression.objects.create(pattern="user4@example.org")
    done = campaign_in(C.COMPLETED, [audience])
    login_as(client, MARKETER)
    url = reverse("campaigns:campaign_action", args=[done.pk, "resend_all"])

    assert "4 recipients on its lists get it again" in client.get(url).content.decode()
    client.post(url, {"confirmed": "yes"})

    again = Campaign.objects.exclude(pk=done.pk).get()
    assert again.name == f"{done.name} (resend)"
    assert again.status == C.SCHEDULED
    assert list(again.lists.all()) == [audience]
    assert status_of(done) == C.COMPLETED  # the first report stays as it was


def test_duplicate_makes_a_draft_and_opens_it(client: Client) -> None:
    original = campaign_in(C.COMPLETED, [make_audience(1)])
    login_as(client, MARKETER)

    response = act(client, original, "duplicate")

    copy = Campaign.objects.exclude(pk=original.pk).get()
    assert copy.status == C.DRAFT and copy.name.endswith("(copy)")
    assert response.redirect_chain[-1][0] == reverse("campaigns:campaign_report", args=[copy.pk])


def test_an_unknown_action_is_not_found(client: Client) -> None:
    campaign = campaign_in(C.SENDING)
    login_as(client, ADMINISTRATOR)
    url = reverse("campaigns:campaign_action", args=[campaign.pk, "explode"])
    assert client.post(url).status_code == 404
