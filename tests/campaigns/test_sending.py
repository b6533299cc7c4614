"""Sending behaviour users notice: parallel reused sessions, the return
path, self-protection against failing servers and runaway errors."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from campaigns import services
from campaigns.messages import verp_token
from campaigns.models import Campaign, CampaignItem, Subscription
from dispatchers.models import Dispatcher
from jobs.models import Notification
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SinkHandler, SmtpSink, free_port

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def send_everything(dispatcher: Dispatcher) -> None:
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)


def start(count: int, dispatcher: Dispatcher) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


def test_a_batch_is_sent_over_several_parallel_sessions_each_reused():
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port), connections=4, batch_size=200
        )
        start(200, dispatcher)
        send_everything(dispatcher)

    assert sink.per_recipient() == {f"user{i}@example.org": 1 for i in range(200)}
    assert 1 < len(sink.handler.sessions) <= 4
    assert all(count > 1 for count in sink.handler.sessions.values())


def test_the_return_path_carries_a_signed_token_of_the_item():
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = start(1, dispatcher)
        send_everything(dispatcher)

    sender = sink.received[0].sender
    item = CampaignItem.objects.get(campaign=campaign)
    assert sender.endswith("@herald.test")
    assert len(sender.partition("@")[0]) <= 64
    assert verp_token(sender) == item.token
    forged = sender.replace(item.token, "0" * 32)
    assert verp_token(forged) is None


def test_a_dispatcher_that_keeps_failing_to_connect_pauses_itself_and_says_why(settings):
    settings.HERALD_DISPATCHER_MAX_FAILURES = 3
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=free_port()), batch_size=2)
    campaign = start(5, dispatcher)

    for _ in range(5):
        if (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
            services.batch_send(batch_id=batch.pk)

    dispatcher.refresh_from_db()
    assert not dispatcher.is_enabled
    assert "Paused after 3 failed connections" in dispatcher.paused_reason
    assert Notification.objects.get(key=f"dispatcher:{dispatcher.pk}:paused").level == "error"
    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        S.PENDING
    }


def test_a_campaign_with_a_run_of_errors_pauses_itself(settings):
    settings.HERALD_CAMPAIGN_MAX_CONSECUTIVE_ERRORS = 4
    with SmtpSink(rcpt_rule=lambda a: "554 5.7.1 Relay access denied") as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port), batch_size=3)
        campaign = start(10, dispatcher)
        send_everything(dispatcher)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert campaign.paused_reason == "Paused after 6 send errors in a row."
    # It stopped early instead of failing the whole audience.
    assert CampaignItem.objects.filter(campaign=campaign, status=S.FAILED).count() == 6
    assert Notification.objects.filter(key=f"campaign:{campaign.pk}:paused").exists()


def test_pausing_a_campaign_mid_batch_puts_the_rest_back(settings):
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    campaign = start(3, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.campaign_pause(campaign=campaign)

    assert services.batch_send(batch_id=batch.pk) == 0

    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        S.PENDING
    }
    assert services.campaign_resume(campaign=Campaign.objects.get(pk=campaign.pk))
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.SENDING


@dataclass
class PausingSink(SinkHandler):
    """A server that takes 20 ms a message (at most 50 a second) and, as it
    takes the fifth, has the campaign paused by someone in the browser."""

    campaign_id: int = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        await asyncio.sleep(0.02)
        reply = await super().handle_DATA(server, session, envelope)
        if self.counter == 5:
            await asyncio.to_thread(self._pause)
        return reply

    def _pause(self) -> None:
        try:
            Campaign.objects.filter(pk=self.campaign_id).update(status=Campaign.Status.PAUSED)
        finally:
            connection.close()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_campaign_paused_mid_batch_stops_within_a_second_and_the_rest_go_back():
    handler = PausingSink()
    with SmtpSink(handler=handler) as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port), connections=1, batch_size=300
        )
        campaign = start(300, dispatcher)
        handler.campaign_id = campaign.pk
        batch = services.batch_claim(dispatcher_id=dispatcher.pk)
        services.batch_send(batch_id=batch.pk)

    statuses = Counter(
        CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)
    )
    # Within about a second of the pause (50 messages at this server's pace,
    # plus those already handed to the session), the batch stopped: the
    # rest went back to wait for the resume, and nothing was lost.
    assert 5 <= statuses[S.SENT] < 150
    assert statuses == {S.SENT: statuses[S.SENT], S.PENDING: 300 - statuses[S.SENT]}
    assert len(sink.received) == statuses[S.SENT]
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.PAUSED


# --- autoresponders ---------------------------------------------------------


def test_an_autoresponder_answers_new_subscribers_once_their_delay_is_over():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    audience = make_audience(2)  # subscribed before the autoresponder starts
    welcome = make_campaign(dispatcher=dispatcher, lists=[audience])
    Campaign.objects.filter(pk=welcome.pk).update(
        kind=Campaign.Kind.AUTORESPONDER, autoresponder_delay=timedelta(hours=1)
    )
    welcome.refresh_from_db()
    services.campaign_schedule(campaign=welcome)
    newcomer = make_audience(1, name="Other", domain="new.example").contacts.get()
    Subscription.objects.create(contact=newcomer, contact_list=audience)

    assert services.autoresponders_process() == 0  # delay not over yet
    later = timezone.now() + timedelta(hours=1, minutes=1)
    assert services.autoresponders_process(now=later) == 1
    assert services.autoresponders_process(now=later) == 0  # never twice

    item = CampaignItem.objects.get(campaign=welcome)
    assert (item.contact, item.status) == (newcomer, S.PENDING)
    assert services.campaigns_complete(now=later) == 0  # autoresponders keep running


def test_a_date_autoresponder_fires_once_on_the_day_the_date_comes_round():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    audience = make_audience(5)
    today = timezone.now().date()
    contacts = list(audience.contacts.order_by("id"))
    renewals = {
        contacts[0]: (today + timedelta(days=7)).isoformat(),  # due: 7 days before renewal
        contacts[1]: (today + timedelta(days=8)).isoformat(),  # due tomorrow
        contacts[2]: (today - timedelta(days=400)).isoformat(),  # long past: never mailed
        contacts[3]: "2023-02-30",  # looks like a date, is not one: skipped, no crash
    }  # contacts[4] has no renewal date at all
    for contact, renewal in renewals.items():
        contact.attributes = {"renewal_date": renewal}
        contact.save()
    reminder = make_campaign(dispatcher=dispatcher, lists=[audience])
    Campaign.objects.filter(pk=reminder.pk).update(
        kind=Campaign.Kind.AUTORESPONDER,
        trigger=Campaign.Trigger.DATE_ATTRIBUTE,
        date_attribute="renewal_date",
        date_offset_days=-7,
    )
    reminder.refresh_from_db()
    services.campaign_schedule(campaign=reminder)

    assert services.autoresponders_process() == 1
    assert services.autoresponders_process() == 0  # never twice
    tomorrow = timezone.now() + timedelta(days=1)
    assert services.autoresponders_process(now=tomorrow) == 1
    assert services.autoresponders_process(now=tomorrow + timedelta(days=365)) == 0
    mailed = set(CampaignItem.objects.filter(campaign=reminder).values_list("contact", flat=True))
    assert mailed == {contacts[0].pk, contacts[1].pk}


def test_a_date_autoresponder_needs_its_attribute():
    campaign = Campaign(
        name="Birthday",
        kind=Campaign.Kind.AUTORESPONDER,
        trigger=Campaign.Trigger.DATE_ATTRIBUTE,
        date_attribute="",
    )
    with pytest.raises(ValidationError) as error:
        campaign.clean()
    assert "date_attribute" in error.value.message_dict
    campaign.date_attribute = "Birth Day; DROP"
    with pytest.raises(ValidationError) as error:
        campaign.clean_fields(exclude=["template", "dispatcher"])
    assert "date_attribute" in error.value.message_dict


def test_a_campaign_paused_while_paging_its_audience_resumes_paging():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(10)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate_page(campaign_id=campaign.pk, page_size=4)
    campaign.refresh_from_db()
    assert services.campaign_pause(campaign=campaign, reason="by hand")

    assert services.campaign_resume(campaign=Campaign.objects.get(pk=campaign.pk))
    services.items_generate(page_size=4)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert CampaignItem.objects.filter(campaign=campaign).count() == 10


def test_resuming_a_dispatcher_clears_its_notification(settings):
    settings.HERALD_DISPATCHER_MAX_FAILURES = 1
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=free_port()))
    start(1, dispatcher)
    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)
    key = f"dispatcher:{dispatcher.pk}:paused"
    assert Notification.objects.get(key=key).resolved_at is None

    from dispatchers.services import dispatcher_resume

    assert dispatcher_resume(dispatcher=Dispatcher.objects.get(pk=dispatcher.pk))
    assert Notification.objects.get(key=key).resolved_at is not None
    assert Dispatcher.objects.get(pk=dispatcher.pk).consecutive_failures == 0


def test_a_rejected_login_stops_the_dispatcher_at_once_and_says_what_to_do(settings):
    from tests.smtpservers.servers import USER, smtp_server

    settings.HERALD_DISPATCHER_MAX_FAILURES = 5  # no waiting for a run of failures
    with smtp_server(auth_require_tls=False) as (port, _handler):
        server = make_smtp_server(
            port=port,
            auth_method="clear",
            username=USER,
            password="wrong password",
            allow_insecure_auth=True,
        )
        dispatcher = make_dispatcher(smtp_server=server)
        campaign = start(3, dispatcher)
        services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    dispatcher.refresh_from_db()
    assert not dispatcher.is_enabled
    assert dispatcher.paused_reason.startswith("Stopped:")
    notification = Notification.objects.get(key=f"dispatcher:{dispatcher.pk}:paused")
    assert "then resume the dispatcher" in notification.message
    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        S.PENDING
    }


def test_a_dispatcher_on_an_inactive_server_claims_nothing_and_says_why():
    with SmtpSink() as sink:
        server = make_smtp_server(port=sink.port, is_active=False)
        dispatcher = make_dispatcher(smtp_server=server)
        start(2, dispatcher)

        assert services.batch_claim(dispatcher_id=dispatcher.pk) is None

    dispatcher.refresh_from_db()
    assert dispatcher.blocked_reason == f"SMTP server “{server.name}” is inactive"
    assert sink.received == []


def test_list_unsubscribe_offers_a_signed_mailto_address_when_mail_is_read(settings):
    from campaigns.messages import UNSUBSCRIBE_TAG, tagged_token

    settings.HERALD_LIST_UNSUBSCRIBE_MAILTO = True
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = start(1, dispatcher)
        send_everything(dispatcher)

    header = sink.received[0].message["List-Unsubscribe"]
    https, mailto = (part.strip(" <>") for part in header.split(","))
    assert https.startswith("http://127.0.0.1:8000/u/") or https.startswith(
        settings.HERALD_PUBLIC_URL
    )
    address = mailto.removeprefix("mailto:").partition("?")[0]
    assert address.endswith("@herald.test")
    assert tagged_token(tag=UNSUBSCRIBE_TAG, address=address) == (
        CampaignItem.objects.get(campaign=campaign).token
    )


def test_list_unsubscribe_travels_as_plain_urls_not_encoded_words(settings):
    settings.HERALD_PUBLIC_URL = "https://mail.example.com/a-long-prefix-to-push-past-78-columns"
    settings.HERALD_LIST_UNSUBSCRIBE_MAILTO = True
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        start(1, dispatcher)
        send_everything(dispatcher)

    raw = sink.received[0].raw.decode()
    header = next(line for line in raw.split("\r\n") if line.startswith("List-Unsubscribe:"))
    assert header.startswith("List-Unsubscribe: <https://mail.example.com/a-long-prefix")
    assert "=?" not in header and ", <mailto:unsubscribe+" in header
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw


def test_a_finished_batch_claims_its_successor_within_the_limits():
    dispatcher = make_dispatcher(
        delivery_mode="pickup",
        pickup_directory="/tmp/herald-test-outbox",
        batch_size=10,
        messages_per_hour=25,
    )
    start(30, dispatcher)
    first = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=first.pk)

    second = services.batch_successor_claim(batch_id=first.pk)
    assert second is not None and second.size == 10
    services.batch_send(batch_id=second.pk)
    third = services.batch_successor_claim(batch_id=second.pk)
    assert third is not None and third.size == 5  # the hourly limit: 25
    assert services.batch_successor_claim(batch_id=third.pk) is None
