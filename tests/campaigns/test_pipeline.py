"""The pipeline, step by step, against real PostgreSQL and a real SMTP server."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem, Contact, Subscription, Suppression
from dispatchers.models import Dispatcher, RateUsage
from jobs.locks import BATCHES
from tests.helpers import (
    make_audience,
    make_campaign,
    make_dispatcher,
    make_smtp_server,
    make_template,
)
from tests.smtp import SmtpSink, free_port

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def sending_campaign(count: int, dispatcher, **extra):
    campaign = make_campaign(
        dispatcher=dispatcher,
        lists=[make_audience(count)],
        status=Campaign.Status.SCHEDULED,
        **extra,
    )
    services.items_generate()
    campaign.refresh_from_db()
    return campaign


def statuses(campaign) -> dict[str, int]:
    from campaigns.selectors import campaign_counts

    return campaign_counts(campaign_id=campaign.pk)


# --- generate ---------------------------------------------------------------


def test_it_generates_one_item_per_subscribed_contact_page_by_page():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(23)], status=Campaign.Status.SCHEDULED
    )

    inserted = services.items_generate(page_size=5)

    campaign.refresh_from_db()
    assert inserted == 23
    assert campaign.status == Campaign.Status.SENDING
    assert statuses(campaign) == {S.PENDING: 23}


def test_a_contact_on_two_lists_gets_one_item():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    first = make_audience(3, name="A")
    second = make_audience(0, name="B")
    second.contacts.add(*first.contacts.all())
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[first, second], status=Campaign.Status.SCHEDULED
    )

    services.items_generate()

    assert CampaignItem.objects.filter(campaign=campaign).count() == 3


def test_pages_over_overlapping_lists_reach_each_member_once_and_no_one_who_left():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    odd, third, everyone = (make_audience(0, name=n) for n in ("Odd", "Third", "All"))
    contacts = list(make_audience(30, name="Source").contacts.order_by("pk"))
    odd.contacts.add(*contacts[1::2])
    third.contacts.add(*contacts[::3])
    everyone.contacts.add(*contacts[20:])
    # Left "Odd" through the preferences page; still on "Third".
    Subscription.objects.filter(contact_list=odd, contact__in=contacts[3:9]).update(
        unsubscribed_at=timezone.now()
    )
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[odd, third, everyone], status=Campaign.Status.SCHEDULED
    )

    services.items_generate(page_size=4)  # pages cut across all three lists

    left_only_odd = {c for c in contacts[3:9] if c not in contacts[::3]}
    expected = (set(contacts[1::2]) | set(contacts[::3]) | set(contacts[20:])) - left_only_odd
    reached = CampaignItem.objects.filter(campaign=campaign).values_list("contact", flat=True)
    assert sorted(reached) == sorted(c.pk for c in expected)


def test_it_skips_suppressed_unsubscribed_and_bounced_contacts_with_the_reason():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    audience = make_audience(5)
    Contact.objects.filter(email="user0@example.org").update(status=Contact.Status.UNSUBSCRIBED)
    Contact.objects.filter(email="user1@example.org").update(status=Contact.Status.BOUNCED)
    Suppression.objects.create(pattern="user2@example.org")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED
    )

    services.items_generate()

    reasons = dict(
        CampaignItem.objects.filter(campaign=campaign, status=S.SKIPPED).values_list(
            "contact__email", "skip_reason"
        )
    )
    assert reasons == {
        "user0@example.org": "unsubscribed",
        "user1@example.org": "bounced",
        "user2@example.org": "suppressed",
    }
    assert statuses(campaign)[S.PENDING] == 2


def test_a_send_limit_takes_that_many_recipients_in_joining_order_suppressed_not_counted():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    audience = make_audience(10)
    Suppression.objects.create(pattern="user1@example.org")
    Contact.objects.filter(email="user3@example.org").update(status=Contact.Status.UNSUBSCRIBED)
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED
    )
    Campaign.objects.filter(pk=campaign.pk).update(send_limit=5)

    services.items_generate(page_size=3)  # pages end mid-limit and mid-skip
    services.items_generate(page_size=3)  # a second run adds nobody

    pending = CampaignItem.objects.filter(campaign=campaign, status=S.PENDING)
    assert sorted(pending.values_list("contact__email", flat=True)) == [
        f"user{i}@example.org" for i in (0, 2, 4, 5, 6)
    ]
    assert statuses(campaign)[S.SKIPPED] == 2  # user1 and user3: skipped, not counted
    assert status_of(campaign) == Campaign.Status.SENDING
    assert not CampaignItem.objects.filter(
        campaign=campaign, contact__email__in=[f"user{i}@example.org" for i in (7, 8, 9)]
    ).exists()


def test_an_autoresponder_cannot_have_a_send_limit():
    from django.core.exceptions import ValidationError

    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(1)])
    campaign.kind = Campaign.Kind.AUTORESPONDER
    campaign.autoresponder_delay = timedelta(hours=1)
    campaign.send_limit = 10
    with pytest.raises(ValidationError) as error:
        campaign.full_clean()
    assert "send_limit" in error.value.message_dict


def status_of(campaign: Campaign) -> str:
    campaign.refresh_from_db()
    return campaign.status


def test_a_suppressed_domain_skips_every_address_in_it():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    Suppression.objects.create(pattern="*@example.org")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(4)], status=Campaign.Status.SCHEDULED
    )

    services.items_generate()

    assert statuses(campaign) == {S.SKIPPED: 4}


def test_generating_again_creates_no_duplicates():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(7)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate(page_size=3)
    Campaign.objects.filter(pk=campaign.pk).update(
        status=Campaign.Status.GENERATING, generated_through=0
    )

    assert services.items_generate(page_size=3) == 0
    assert CampaignItem.objects.filter(campaign=campaign).count() == 7


def test_a_campaign_scheduled_for_later_is_not_generated_yet():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(2)])
    services.campaign_schedule(campaign=campaign, when=timezone.now() + timedelta(hours=1))

    services.items_generate()

    assert not CampaignItem.objects.filter(campaign=campaign).exists()


# --- claim and rate limits --------------------------------------------------


def test_claims_never_exceed_the_hourly_limit():
    dispatcher = make_dispatcher(
        delivery_mode="pickup", pickup_directory="/tmp/unused", messages_per_hour=12, batch_size=5
    )
    campaign = sending_campaign(30, dispatcher)

    sizes = []
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        sizes.append(batch.size)
        Batch.objects.filter(pk=batch.pk).update(finished_at=timezone.now())  # keep claiming

    assert sizes == [5, 5, 2]
    assert statuses(campaign) == {S.CLAIMED: 12, S.PENDING: 18}
    assert sum(RateUsage.objects.values_list("count", flat=True)) == 12


def _claim_and_finish(dispatcher) -> Batch | None:
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    if batch is not None:  # as if sent: make room under the open-batch limit
        Batch.objects.filter(pk=batch.pk).update(finished_at=timezone.now())
    return batch


def test_claims_take_everyone_once_and_soon_retake_an_item_due_again_behind_them():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    Dispatcher.objects.filter(pk=dispatcher.pk).update(batch_size=3)
    campaign = sending_campaign(60, dispatcher)
    first = _claim_and_finish(dispatcher)
    early = CampaignItem.objects.filter(batch=first).order_by("id").first()
    # A retry that falls due while later claims have moved past it.
    CampaignItem.objects.filter(pk=early.pk).update(
        status=S.DEFERRED, batch=None, next_attempt_at=timezone.now() - timedelta(seconds=1)
    )

    claims = 0
    while CampaignItem.objects.get(pk=early.pk).status != S.CLAIMED:
        assert _claim_and_finish(dispatcher) is not None
        claims += 1
    while _claim_and_finish(dispatcher) is not None:
        pass

    assert claims <= services.CLAIM_SWEEP_EVERY
    assert statuses(campaign) == {S.CLAIMED: 60}
    assert sum(Batch.objects.filter(dispatcher=dispatcher).values_list("size", flat=True)) == 61


def test_a_disabled_dispatcher_claims_nothing():
    dispatcher = make_dispatcher(
        delivery_mode="pickup", pickup_directory="/tmp/unused", is_enabled=False
    )
    sending_campaign(3, dispatcher)

    assert services.batch_claim(dispatcher_id=dispatcher.pk) is None


def test_a_paused_campaign_is_not_claimed():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(3, dispatcher)
    assert services.campaign_pause(campaign=campaign)

    assert services.batch_claim(dispatcher_id=dispatcher.pk) is None


# --- send -------------------------------------------------------------------


def test_it_sends_each_recipient_one_personalised_message(sink):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
    campaign = sending_campaign(3, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)

    assert services.batch_send(batch_id=batch.pk) == 3

    assert sink.per_recipient() == {f"user{i}@example.org": 1 for i in range(3)}
    by_rcpt = {r.recipients[0]: r.message for r in sink.received}
    message = by_rcpt["user1@example.org"]
    assert message["Subject"] == "Hello First1"
    assert message["To"] == "First1 Last1 <user1@example.org>"
    assert message["From"] == "Herald News <news@herald.test>"
    assert "Dear First1 Last1" in message.get_body(("plain",)).get_content()
    assert "<p>Dear First1,</p>" in message.get_body(("html",)).get_content()
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    item = CampaignItem.objects.get(campaign=campaign, contact__email="user1@example.org")
    assert message["Message-ID"] == f"<{item.token}@herald.test>"
    assert item.status == S.SENT
    assert item.queue_id.startswith("Q")
    assert item.smtp_code == 250


def test_a_temporary_refusal_defers_the_item_with_back_off():
    with SmtpSink(
        rcpt_rule=lambda a: "451 4.7.1 Try later" if a.startswith("user0@") else None
    ) as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = sending_campaign(2, dispatcher)
        batch = services.batch_claim(dispatcher_id=dispatcher.pk)
        before = timezone.now()
        services.batch_send(batch_id=batch.pk)

    item = CampaignItem.objects.get(campaign=campaign, contact__email="user0@example.org")
    assert item.status == S.DEFERRED
    assert item.smtp_code == 451
    assert item.next_attempt_at >= before + timedelta(minutes=5)
    assert statuses(campaign) == {S.DEFERRED: 1, S.SENT: 1}


def _mixed_reply(address: str) -> str | None:
    number = int(address.removeprefix("user").partition("@")[0])
    if number % 7 == 3:
        return "451 4.7.1 Try later"
    if number % 11 == 5:
        return "550 5.1.1 No such user"
    return None


def test_a_large_batch_records_each_items_own_verdict_across_chunks():
    # 260 items: results are written back in chunks, and every item must
    # still end with its own outcome, code, queue id and times.
    with SmtpSink(rcpt_rule=_mixed_reply) as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port), batch_size=260, connections=3
        )
        campaign = sending_campaign(260, dispatcher)
        Contact.objects.filter(email="user2@example.org").update(status=Contact.Status.BOUNCED)
        batch = services.batch_claim(dispatcher_id=dispatcher.pk)
        before = timezone.now()

        assert services.batch_send(batch_id=batch.pk) == 260

    items = {
        int(i.contact.email.removeprefix("user").partition("@")[0]): i
        for i in CampaignItem.objects.filter(campaign=campaign).select_related("contact")
    }
    for number, item in items.items():
        assert item.sending_started_at is None
        if number == 2:
            assert (item.status, item.skip_reason, item.attempts) == (S.SKIPPED, "bounced", 0)
        elif number % 7 == 3:
            assert (item.status, item.smtp_code, item.batch_id) == (S.DEFERRED, 451, None)
            assert item.next_attempt_at >= before + timedelta(minutes=5)
            assert item.first_attempt_at >= before and item.attempts == 1
        elif number % 11 == 5:
            assert (item.status, item.smtp_code, item.attempts) == (S.FAILED, 550, 1)
            assert "No such user" in item.smtp_response and item.first_attempt_at >= before
        else:
            assert (item.status, item.smtp_code, item.attempts) == (S.SENT, 250, 1)
            assert item.sent_at >= before and item.queue_id.startswith("Q")
            assert item.batch_id == batch.pk and not item.possibly_duplicated
    sent = [n for n, i in items.items() if i.status == S.SENT]
    assert sink.per_recipient() == {f"user{n}@example.org": 1 for n in sent}
    assert len({items[n].queue_id for n in sent}) == len(sent)  # each its own reply
    assert Suppression.objects.filter(source="bounce").count() == len(
        [n for n in items if n % 11 == 5 and n % 7 != 3]
    )


def test_a_deferred_item_is_claimed_again_when_due():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(1, dispatcher)
    CampaignItem.objects.filter(campaign=campaign).update(
        status=S.DEFERRED, next_attempt_at=timezone.now() + timedelta(minutes=1)
    )
    assert services.batch_claim(dispatcher_id=dispatcher.pk) is None

    later = timezone.now() + timedelta(minutes=2)
    assert services.batch_claim(dispatcher_id=dispatcher.pk, now=later).size == 1


def test_a_bad_mailbox_fails_once_and_is_suppressed_for_the_next_campaign():
    with SmtpSink(
        rcpt_rule=lambda a: "550 5.1.1 No such user" if a.startswith("user1@") else None
    ) as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = sending_campaign(3, dispatcher)
        services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert statuses(campaign) == {S.SENT: 2, S.FAILED: 1}
    assert Suppression.objects.filter(pattern="user1@example.org", source="bounce").exists()
    second = make_campaign(
        dispatcher=dispatcher, lists=list(campaign.lists.all()), status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    assert (
        CampaignItem.objects.get(campaign=second, contact__email="user1@example.org").status
        == S.SKIPPED
    )


def test_an_unreachable_server_puts_the_batch_back_untouched():
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=free_port()))
    campaign = sending_campaign(4, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)

    assert services.batch_send(batch_id=batch.pk) == 0

    assert statuses(campaign) == {S.PENDING: 4}
    assert not CampaignItem.objects.filter(possibly_duplicated=True).exists()
    batch.refresh_from_db()
    assert batch.finished_at is not None
    assert sum(RateUsage.objects.values_list("count", flat=True)) == 0  # budget given back


def test_an_address_unsubscribed_after_generation_is_skipped_at_send_time(sink):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
    campaign = sending_campaign(2, dispatcher)
    Contact.objects.filter(email="user0@example.org").update(status=Contact.Status.UNSUBSCRIBED)

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert sink.per_recipient() == {"user1@example.org": 1}
    assert statuses(campaign) == {S.SENT: 1, S.SKIPPED: 1}


def test_a_header_breaking_value_fails_that_item_and_sends_the_rest(sink):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
    campaign = sending_campaign(2, dispatcher)
    # Bypasses validation on purpose, as a raw import or SQL might.
    Contact.objects.filter(email="user0@example.org").update(
        first_name="Eve\r\nBcc: all@victim.test"
    )

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    item = CampaignItem.objects.get(campaign=campaign, contact__email="user0@example.org")
    assert item.status == S.FAILED
    assert "Line breaks" in item.smtp_response
    assert sink.per_recipient() == {"user1@example.org": 1}
    assert all("all@victim.test" not in str(r.message) for r in sink.received)


def test_a_redelivered_task_for_a_finished_batch_sends_nothing(sink):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
    sending_campaign(2, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=batch.pk)

    assert services.batch_send(batch_id=batch.pk) == 0
    assert len(sink.received) == 2


# --- dead workers -----------------------------------------------------------


def _other_session_holding(batch_id: int) -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    other = psycopg.connect(**params, autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s, %s)", [BATCHES, batch_id])
    return other


def _started_batch(dispatcher, on_the_wire: int):
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    Batch.objects.filter(pk=batch.pk).update(started_at=timezone.now())
    first = CampaignItem.objects.filter(batch=batch).order_by("id")[:on_the_wire]
    CampaignItem.objects.filter(pk__in=list(first.values_list("pk", flat=True))).update(
        sending_started_at=timezone.now()
    )
    return batch


def test_a_batch_whose_worker_died_goes_back_with_the_in_flight_item_flagged():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(3, dispatcher)
    _started_batch(dispatcher, on_the_wire=1)

    assert services.batches_reclaim(now=timezone.now()) == 3

    assert statuses(campaign) == {S.PENDING: 3}
    assert CampaignItem.objects.filter(possibly_duplicated=True).count() == 1


def test_a_batch_still_being_sent_is_left_alone():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(3, dispatcher)
    batch = _started_batch(dispatcher, on_the_wire=1)
    other = _other_session_holding(batch.pk)
    try:
        assert services.batches_reclaim(now=timezone.now()) == 0
        assert services.batch_send(batch_id=batch.pk) == 0  # a duplicate task backs off
    finally:
        other.close()
    assert statuses(campaign) == {S.CLAIMED: 3}


def test_a_queued_batch_is_reclaimed_only_after_its_lease():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(2, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)

    assert services.batches_reclaim(now=timezone.now()) == 0
    assert services.batches_reclaim(now=batch.lease_expires_at + timedelta(seconds=1)) == 2
    assert statuses(campaign) == {S.PENDING: 2}


# --- complete ---------------------------------------------------------------


def test_a_campaign_completes_only_when_no_item_is_left_to_send(sink):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
    campaign = sending_campaign(3, dispatcher)
    Contact.objects.filter(email="user2@example.org").update(status=Contact.Status.BOUNCED)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    assert services.campaigns_complete() == 0

    services.batch_send(batch_id=batch.pk)
    assert services.campaigns_complete() == 1

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert (campaign.total_count, campaign.sent_count, campaign.skipped_count) == (3, 2, 1)


def test_history_prune_forgets_old_batches_and_leaves_what_they_sent_alone(sink, settings):
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port), batch_size=2)
    campaign = sending_campaign(5, dispatcher)
    old = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=old.pk)
    recent = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=recent.pk)
    still_open = services.batch_claim(dispatcher_id=dispatcher.pk)
    # A day past the history period for the old batch, within it for the recent one.
    later = timezone.now() + timedelta(days=settings.HERALD_HISTORY_DAYS - 1)
    Batch.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=2))
    sent_before = list(
        CampaignItem.objects.filter(status=S.SENT).values_list("pk", "sent_at", "smtp_code")
    )

    services.history_prune(now=later)

    assert list(Batch.objects.order_by("pk").values_list("pk", flat=True)) == [
        recent.pk,
        still_open.pk,
    ]
    # The four sent keep their results; the open batch still sends its last.
    assert statuses(campaign) == {S.SENT: 4, S.CLAIMED: 1}
    assert (
        list(CampaignItem.objects.filter(status=S.SENT).values_list("pk", "sent_at", "smtp_code"))
        == sent_before
    )
    assert services.batch_send(batch_id=still_open.pk) == 1
    assert statuses(campaign) == {S.SENT: 5}
    assert sink.per_recipient() == {f"user{i}@example.org": 1 for i in range(5)}


def test_scheduling_needs_a_draft_with_a_list():
    from django.core.exceptions import ValidationError

    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = make_campaign(dispatcher=dispatcher, lists=[], template=make_template())
    with pytest.raises(ValidationError, match="at least one list"):
        services.campaign_schedule(campaign=campaign)
    campaign.lists.set([make_audience(1)])
    services.campaign_schedule(campaign=campaign)
    campaign.refresh_from_db()
    with pytest.raises(ValidationError, match="Only a draft"):
        services.campaign_schedule(campaign=campaign)


def test_a_message_in_doubt_keeps_its_share_of_the_hourly_budget():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    sending_campaign(3, dispatcher)
    _started_batch(dispatcher, on_the_wire=1)

    services.batches_reclaim(now=timezone.now())

    # Two never left: refunded. One may have been delivered: still counted.
    assert sum(RateUsage.objects.values_list("count", flat=True)) == 1


def test_a_batch_whose_worker_died_flags_the_items_within_its_on_the_wire_mark_only():
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    campaign = sending_campaign(5, dispatcher)
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    first, second, *rest = CampaignItem.objects.filter(batch=batch).order_by("id")
    CampaignItem.objects.filter(pk=first.pk).update(status=S.SENT, sent_at=timezone.now())
    # The worker marked the chunk up to the second item, then died.
    Batch.objects.filter(pk=batch.pk).update(started_at=timezone.now(), on_wire_through=second.pk)

    assert services.batches_reclaim(now=timezone.now()) == 4

    assert statuses(campaign) == {S.SENT: 1, S.PENDING: 4}
    assert set(CampaignItem.objects.filter(possibly_duplicated=True)) == {second}
