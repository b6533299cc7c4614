"""Real bounces from real mail servers: Herald sends a campaign through
Postfix, Postfix accepts it, finds that two of the recipients do not exist
and writes genuine delivery status notifications to the VERP return path,
which it delivers into the maildir of a bounce mailbox served by Dovecot.
The process-bounce-email job reads them over IMAP or POP3, records hard
bounces, suppresses the addresses by the rules and deletes the messages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bounces import tasks
from bounces.models import Bounce, BounceMailbox, Kind
from campaigns import services as pipeline
from campaigns.models import Campaign, CampaignItem, Contact, Suppression
from jobs.models import Job, JobRun
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server

from .dovecot import Dovecot
from .postfix import Postfix

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
DOMAIN = "nosuchusers.example"  # Postfix's own domain: only user2 exists there
BOUNCE_DOMAIN = "herald.test"  # the dispatcher's From domain: where bounces go


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Dovecot, Postfix]]:
    dovecot = Dovecot().start()
    try:
        postfix = Postfix(
            dovecot=dovecot,
            bounce_domain=BOUNCE_DOMAIN,
            recipient_domain=DOMAIN,
            existing=("user2",),
        ).start()
    except BaseException:
        dovecot.stop()
        raise
    yield dovecot, postfix
    postfix.stop()
    dovecot.stop()


def send_campaign_through(postfix: Postfix) -> None:
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=postfix.port))
    assert dispatcher.from_email.endswith("@" + BOUNCE_DOMAIN)
    make_campaign(
        dispatcher=dispatcher,
        lists=[make_audience(3, domain=DOMAIN)],
        status=Campaign.Status.SCHEDULED,
    )
    pipeline.items_generate()
    while (batch := pipeline.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        pipeline.batch_send(batch_id=batch.pk)
    # Postfix accepted all three: the failures come back later, as mail.
    assert CampaignItem.objects.filter(status=S.SENT).count() == 3


def wait_for_reports(dovecot: Dovecot, postfix: Postfix, count: int) -> list[bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(reports := dovecot.stored()) >= count:
            return reports
        time.sleep(0.1)
    raise AssertionError(f"no {count} reports in the maildir; Postfix said:\n{postfix.log()}")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_genuine_postfix_bounces_read_over_imap_and_pop3_suppress_the_addresses(
    servers: tuple[Dovecot, Postfix], protocol: str
) -> None:
    dovecot, postfix = servers
    send_campaign_through(postfix)
    reports = wait_for_reports(dovecot, postfix, 2)
    assert all(b"Content-Type: multipart/report; report-type=delivery-status" in r for r in reports)
    assert all(b"Reporting-MTA: dns; mx." + DOMAIN.encode() in r for r in reports)
    assert len(postfix.delivered("user2")) >= 1  # the one that exists got it
    BounceMailbox.objects.create(
        name=f"Bounces over {protocol}",
        protocol=protocol,
        host="127.0.0.1",
        port=dovecot.ports[f"{protocol}s"],
        security=BounceMailbox.Security.SSL,
        verify_certificate=False,  # Dovecot's test certificate is self-signed
        timeout=10,
        username=dovecot.user,
        password=dovecot.password,
    )

    assert tasks.process_bounces() == 2

    for user in ("user0", "user1"):
        item = CampaignItem.objects.select_related("contact").get(contact__email=f"{user}@{DOMAIN}")
        assert item.status == S.BOUNCED
        assert item.contact.status == Contact.Status.BOUNCED
        bounce = Bounce.objects.get(contact=item.contact)
        assert (bounce.kind, bounce.status_code, bounce.matched_by) == (Kind.HARD, "5.1.1", "verp")
        assert bounce.item == item and bounce.outcome == "suppressed"
        assert "unknown user" in bounce.diagnostic
    assert set(Suppression.objects.values_list("pattern", flat=True)) == {
        f"user0@{DOMAIN}",
        f"user1@{DOMAIN}",
    }
    delivered = Contact.objects.get(email=f"user2@{DOMAIN}")
    assert delivered.status == Contact.Status.ACTIVE
    assert CampaignItem.objects.get(contact=delivered).status == S.SENT
    assert dovecot.stored() == []  # deleted on the server
    assert JobRun.objects.get(job=Job.PROCESS_BOUNCES).items_processed == 2
