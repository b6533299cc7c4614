"""The process-bounce-email job against a real POP3 server, about mail
Herald really sent: it records, applies the rules, deletes what it
recorded and nothing else, and never records a message twice."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from bounces import services, tasks
from bounces.models import Bounce, BounceMailbox, BounceRule, Kind
from bounces.parsing import message_parse
from campaigns.models import CampaignItem, Contact, Suppression
from jobs.locks import BOUNCE_MAILBOXES
from jobs.models import Job, JobRun, Notification
from tests.smtp import Received

from .conftest import interval_passes, item_of
from .pop3 import Maildrop, Pop3Server
from .reports import arf, dsn, plain

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def test_a_hard_bounce_bounces_the_item_suppresses_the_address_and_is_deleted(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    maildrop.add(dsn(sent["user0@example.org"]))

    assert tasks.process_bounces() == 1

    item = item_of("user0@example.org")
    assert item.status == S.BOUNCED
    assert item.contact.status == Contact.Status.BOUNCED
    suppression = Suppression.objects.get(pattern="user0@example.org")
    assert suppression.source == Suppression.Source.BOUNCE
    assert "5.1.1" in suppression.reason
    bounce = Bounce.objects.get()
    assert (bounce.kind, bounce.status_code, bounce.matched_by) == (Kind.HARD, "5.1.1", "verp")
    assert (bounce.item, bounce.campaign_id, bounce.contact) == (
        item,
        item.campaign_id,
        item.contact,
    )
    assert bounce.diagnostic.startswith("smtp; 550 5.1.1 <user0@example.org>")
    assert bounce.outcome == "suppressed"
    # Deleted on the server, by DELE and then QUIT.
    assert maildrop.messages == []
    assert pop3.log[-2:] == ["DELE", "QUIT"]
    # The others are untouched, and the run is on record.
    assert item_of("user1@example.org").status == S.SENT
    assert item_of("user1@example.org").contact.status == Contact.Status.ACTIVE
    run = JobRun.objects.get(job=Job.PROCESS_BOUNCES)
    assert (run.outcome, run.items_processed) == (JobRun.Outcome.OK, 1)


def test_a_run_that_dies_before_quit_deletes_nothing_and_the_next_records_nothing_twice(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    uid = maildrop.add(dsn(sent["user0@example.org"]))
    pop3.fail_on = "QUIT"

    with pytest.raises(services.MailboxError, match="nothing was deleted"):
        tasks.process_bounces()

    assert maildrop.uids() == [uid]  # still on the server
    assert Bounce.objects.count() == 1  # but recorded
    assert JobRun.objects.get().outcome == JobRun.Outcome.FAILED

    pop3.fail_on = None
    interval_passes(mailbox)
    assert services.bounces_process() == 0  # nothing new recorded

    assert maildrop.messages == []  # and now deleted
    assert Bounce.objects.count() == 1
    assert "RETR" not in pop3.log[pop3.log.index("QUIT") :]  # known by its UIDL
    assert not Notification.objects.filter(resolved_at__isnull=True, key__startswith="bounces")


def test_running_the_job_twice_records_one_bounce(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    maildrop.add(dsn(sent["user0@example.org"]))
    services.bounces_process()
    interval_passes(mailbox)
    services.bounces_process()
    assert Bounce.objects.count() == 1


def test_what_cannot_be_read_is_kept_and_reported(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    human = maildrop.add(plain("Re: Hello", "When is the next event?"))
    garbage = maildrop.add(b"\x00\xff not a mail message\r\n")
    maildrop.add(dsn(sent["user1@example.org"]))

    assert services.bounces_process() == 1

    assert maildrop.uids() == [human, garbage]
    notification = Notification.objects.get(key=f"bounces:mailbox:{mailbox.pk}:unread")
    assert "2 message(s)" in notification.title
    assert human in notification.message and garbage in notification.message
    mailbox.refresh_from_db()
    assert mailbox.last_status == "Read 1 message(s), kept 2."


def test_a_parser_crash_keeps_the_message(
    sent: dict[str, Received],
    mailbox: BounceMailbox,
    maildrop: Maildrop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uid = maildrop.add(dsn(sent["user0@example.org"]))

    def crash(raw: bytes) -> None:
        raise UnicodeError("boom")

    monkeypatch.setattr(services, "message_parse", crash)
    assert services.bounces_process() == 0

    assert maildrop.uids() == [uid]
    assert Bounce.objects.count() == 0
    assert "boom" in Notification.objects.get().message


def test_an_auto_reply_is_recorded_as_ignored_and_deleted(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    maildrop.add(
        plain("Automatic reply: Hello", "I am out of the office.", Auto_Submitted="auto-replied")
    )
    assert services.bounces_process() == 1
    assert maildrop.messages == []
    assert Bounce.objects.get().kind == Kind.IGNORED
    assert not Suppression.objects.exists()


def test_a_complaint_suppresses_and_marks_the_contact_complained(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    maildrop.add(arf(sent["user2@example.org"]))
    services.bounces_process()

    item = item_of("user2@example.org")
    assert item.status == S.SENT  # it was delivered; the reader complained
    assert item.contact.status == Contact.Status.COMPLAINED
    assert Suppression.objects.get().source == Suppression.Source.COMPLAINT
    assert Bounce.objects.get().outcome == "suppressed and unsubscribed"


def test_soft_bounces_suppress_only_at_three_within_thirty_days(sent: dict[str, Received]) -> None:
    report = message_parse(
        dsn(sent["user0@example.org"], status="4.2.2", diagnostic="smtp; 452 4.2.2 Mailbox full")
    )
    services.bounce_record(mailbox=None, uid="a", report=report)
    services.bounce_record(mailbox=None, uid="b", report=report)
    Bounce.objects.update(created_at=timezone.now() - timedelta(days=31))
    services.bounce_record(mailbox=None, uid="c", report=report)
    services.bounce_record(mailbox=None, uid="d", report=report)

    assert item_of("user0@example.org").status == S.BOUNCED  # it did not arrive
    assert not Suppression.objects.exists()  # two old ones no longer count
    assert item_of("user0@example.org").contact.status == Contact.Status.ACTIVE

    services.bounce_record(mailbox=None, uid="e", report=report)
    assert Suppression.objects.get().pattern == "user0@example.org"
    assert item_of("user0@example.org").contact.status == Contact.Status.BOUNCED


def test_rules_are_data(sent: dict[str, Received]) -> None:
    BounceRule.objects.filter(kind=Kind.HARD).update(count=2)
    report = message_parse(dsn(sent["user0@example.org"]))
    [bounce] = services.bounce_record(mailbox=None, uid="a", report=report)

    assert bounce.outcome == "1 of 2 within 30 days"
    assert not Suppression.objects.exists()


def test_without_verp_it_matches_by_message_id_then_by_address(
    sent: dict[str, Received],
) -> None:
    received = sent["user0@example.org"]
    item = item_of("user0@example.org")
    # A relay that rewrote the return path: no VERP address anywhere.
    no_verp = dsn(received).replace(received.sender.encode(), b"bounces@herald.test")
    [bounce] = services.bounce_record(mailbox=None, uid="a", report=message_parse(no_verp))
    assert (bounce.matched_by, bounce.item, bounce.campaign_id) == (
        "message-id",
        item,
        item.campaign_id,
    )

    # A forged VERP signature and a foreign Message-ID: only the address is left.
    forged = received.sender.replace(item.token, "f" * 32)
    anonymous = (
        dsn(received)
        .replace(received.sender.encode(), forged.encode())
        .replace(received.message["Message-ID"].encode(), b"<elsewhere@mail.example>")
    )
    [bounce] = services.bounce_record(mailbox=None, uid="b", report=message_parse(anonymous))
    assert (bounce.matched_by, bounce.item, bounce.contact) == ("address", None, item.contact)


def test_a_server_without_uidl_is_read_by_message_digest(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    pop3.uidl = False
    maildrop.add(dsn(sent["user0@example.org"]))
    pop3.fail_on = "QUIT"
    with pytest.raises(services.MailboxError):
        services.bounces_process()
    pop3.fail_on = None
    interval_passes(mailbox)
    services.bounces_process()

    assert maildrop.messages == []
    assert Bounce.objects.get().message_uid.startswith("sha256:")


def test_a_mailbox_that_cannot_be_read_fails_the_run_and_notifies(
    mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    maildrop.password = "changed"
    with pytest.raises(services.MailboxError, match="Invalid login"):
        tasks.process_bounces()
    assert "Invalid login" in Notification.objects.get().message
    mailbox.refresh_from_db()
    assert mailbox.last_status.startswith("Failed: The server refused")


def test_the_job_is_scheduled_every_minute() -> None:
    task = PeriodicTask.objects.get(name="Process bounce email")
    assert task.task == Job.PROCESS_BOUNCES.value == tasks.process_bounces.name
    assert (task.interval.every, task.interval.period, task.enabled) == (60, "seconds", True)


def test_a_mailbox_is_read_only_when_its_poll_interval_has_passed(
    mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    maildrop.add(plain("Automatic reply: Hello", "Away.", Auto_Submitted="auto-replied"))
    mailbox.poll_interval = 15
    mailbox.last_polled_at = timezone.now() - timedelta(minutes=14)
    mailbox.save()

    assert services.bounces_process() == 0
    assert pop3.log == []  # not even a login

    interval_passes(mailbox)
    assert services.bounces_process() == 1
    mailbox.refresh_from_db()
    assert timezone.now() - mailbox.last_polled_at < timedelta(seconds=5)
    assert services.bounces_process() == 0  # just read: waits another 15 minutes
    assert pop3.log.count("USER") == 1


def test_a_second_run_at_the_same_time_leaves_the_mailbox_alone(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    maildrop.add(dsn(sent["user0@example.org"]))
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [BOUNCE_MAILBOXES, mailbox.pk])
        assert services.bounces_process() == 0
    assert pop3.log == []  # it did not even log in
    assert services.bounces_process() == 1


def _mail_to(address: str) -> bytes:
    return (
        f"From: user1@example.org\r\nTo: {address}\r\nDelivered-To: {address}\r\n"
        "Subject: unsubscribe\r\nMessage-ID: <req1@example.org>\r\n\r\nunsubscribe\r\n"
    ).encode()


def test_a_mail_to_the_list_unsubscribe_address_unsubscribes_and_is_deleted(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    from campaigns.messages import UNSUBSCRIBE_TAG, tagged_address

    item = item_of("user1@example.org")
    address = tagged_address(tag=UNSUBSCRIBE_TAG, token=item.token, domain="herald.test")
    maildrop.add(_mail_to(address))

    tasks.process_bounces()
    interval_passes(mailbox)
    tasks.process_bounces()  # read twice: still one record

    assert item_of("user1@example.org").contact.status == Contact.Status.UNSUBSCRIBED
    assert Bounce.objects.get().kind == Kind.UNSUBSCRIBE
    assert maildrop.messages == []


def test_a_mailto_unsubscribe_leaves_a_complained_contact_complained(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    from campaigns.messages import UNSUBSCRIBE_TAG, tagged_address

    item = item_of("user1@example.org")
    Contact.objects.filter(pk=item.contact_id).update(status=Contact.Status.COMPLAINED)
    maildrop.add(_mail_to(tagged_address(tag=UNSUBSCRIBE_TAG, token=item.token, domain="h.test")))

    tasks.process_bounces()

    assert Bounce.objects.get().kind == Kind.UNSUBSCRIBE
    assert item_of("user1@example.org").contact.status == Contact.Status.COMPLAINED
    assert maildrop.messages == []


def test_a_forged_unsubscribe_address_changes_nothing_and_is_kept(
    sent: dict[str, Received], mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    item = item_of("user1@example.org")
    maildrop.add(_mail_to(f"unsubscribe+{item.token}.000000000000@herald.test"))

    tasks.process_bounces()

    assert item_of("user1@example.org").contact.status == Contact.Status.ACTIVE
    assert not Bounce.objects.exists()
    assert len(maildrop.messages) == 1
    assert "not one Herald signed" in Notification.objects.get().message
