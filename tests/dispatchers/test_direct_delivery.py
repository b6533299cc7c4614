"""Direct delivery: campaigns reach each recipient domain's own mail server,
found through its MX records on a real DNS server, over a real SMTP
session announcing the dispatcher's HELO name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from campaigns import services
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Subscription
from dispatchers.models import Dispatcher
from tests.helpers import make_campaign, make_dispatcher
from tests.smtp import RcptRule, SinkHandler, SmtpSink, free_port

from .dns import Zone

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
HELO = "mail.herald.test"


@dataclass
class HeloHandler(SinkHandler):
    helos: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.helos.append(session.host_name)
        return await super().handle_DATA(server, session, envelope)


class HeloSink(SmtpSink):
    """An SMTP sink that also remembers the HELO name of each message."""

    def __init__(
        self, rcpt_rule: RcptRule | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.handler: HeloHandler = HeloHandler(rcpt_rule=rcpt_rule)
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname=host, port=self.port)


@pytest.fixture
def sink(settings: Any) -> Any:
    with HeloSink() as sink:
        settings.HERALD_DIRECT_SMTP_PORT = sink.port
        yield sink


def direct_dispatcher() -> Dispatcher:
    return make_dispatcher(delivery_mode=Dispatcher.DeliveryMode.DIRECT, helo_name=HELO)


def send_to(dispatcher: Dispatcher, *addresses: str) -> Campaign:
    contact_list = ContactList.objects.create(name="Direct")
    for address in addresses:
        contact = Contact.objects.create(email=address)
        Subscription.objects.create(contact=contact, contact_list=contact_list)
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[contact_list], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)
    return campaign


def status_of(address: str) -> CampaignItem:
    return CampaignItem.objects.get(contact__email=address)


def test_mail_goes_to_the_domains_mx_host_over_one_session_with_the_helo_name(
    zone: Zone, sink: HeloSink
) -> None:
    zone.mx("direct.test", "mx1.direct.test")
    zone.a("mx1.direct.test", "127.0.0.1")

    send_to(direct_dispatcher(), "ann@direct.test", "bob@direct.test", "cy@direct.test")

    assert sink.per_recipient() == {
        "ann@direct.test": 1,
        "bob@direct.test": 1,
        "cy@direct.test": 1,
    }
    assert len(sink.handler.sessions) == 1  # one connection for the domain, reused
    assert sink.handler.helos == [HELO, HELO, HELO]
    assert {i.status for i in CampaignItem.objects.all()} == {S.SENT}
    assert status_of("ann@direct.test").queue_id.startswith("Q")


def test_the_most_preferred_mx_gets_the_mail(zone: Zone, sink: HeloSink) -> None:
    # Listed out of order: preference, not the order of the answer, decides.
    zone.mx("direct.test", "backup.direct.test", preference=20)
    zone.mx("direct.test", "primary.direct.test", preference=5)
    zone.a("primary.direct.test", "127.0.0.1")
    zone.a("backup.direct.test", "127.0.0.3")
    with HeloSink(host="127.0.0.3", port=sink.port) as backup:
        send_to(direct_dispatcher(), "ann@direct.test")

    assert sink.per_recipient() == {"ann@direct.test": 1}
    assert backup.received == []


def test_the_next_mx_is_tried_when_the_preferred_one_cannot_be_reached(
    zone: Zone, sink: HeloSink
) -> None:
    zone.mx("direct.test", "primary.direct.test", preference=5)
    zone.mx("direct.test", "backup.direct.test", preference=20)
    zone.a("primary.direct.test", "127.0.0.2")  # nothing listens there
    zone.a("backup.direct.test", "127.0.0.1")

    send_to(direct_dispatcher(), "ann@direct.test")

    assert sink.per_recipient() == {"ann@direct.test": 1}
    assert status_of("ann@direct.test").status == S.SENT


def test_a_domain_without_mx_records_gets_its_mail_at_its_address_record(
    zone: Zone, sink: HeloSink
) -> None:
    zone.a("plain.test", "127.0.0.1")

    send_to(direct_dispatcher(), "ann@plain.test")

    assert sink.per_recipient() == {"ann@plain.test": 1}


def test_refusals_are_failed_or_deferred_by_their_code(zone: Zone, settings: Any) -> None:
    def rule(address: str) -> str | None:
        return {
            "gone@direct.test": "550 5.1.1 <gone@direct.test>: User unknown",
            "full@direct.test": "452 4.2.2 Mailbox full",
        }.get(address)

    zone.mx("direct.test", "mx1.direct.test")
    zone.a("mx1.direct.test", "127.0.0.1")
    with HeloSink(rcpt_rule=rule) as sink:
        settings.HERALD_DIRECT_SMTP_PORT = sink.port
        send_to(direct_dispatcher(), "gone@direct.test", "full@direct.test", "ok@direct.test")

    assert sink.per_recipient() == {"ok@direct.test": 1}
    assert status_of("gone@direct.test").status == S.FAILED
    assert status_of("gone@direct.test").smtp_code == 550
    full = status_of("full@direct.test")
    assert full.status == S.DEFERRED
    assert full.next_attempt_at is not None
    assert status_of("ok@direct.test").status == S.SENT


def test_an_unreachable_domain_is_deferred_a_missing_one_failed_and_the_rest_delivered(
    zone: Zone, sink: HeloSink
) -> None:
    zone.mx("direct.test", "mx1.direct.test")
    zone.a("mx1.direct.test", "127.0.0.1")
    zone.mx("down.test", "mx.down.test")
    zone.a("mx.down.test", "127.0.0.2")  # refuses connections
    zone.mx("nomail.test", ".", preference=0)  # RFC 7505 null MX

    send_to(
        direct_dispatcher(),
        "a@down.test",
        "b@down.test",
        "ann@nowhere.test",  # NXDOMAIN
        "c@nomail.test",
        "ok@direct.test",
    )

    assert sink.per_recipient() == {"ok@direct.test": 1}
    for address in ("a@down.test", "b@down.test"):
        item = status_of(address)
        assert item.status == S.DEFERRED
        assert "No mail server of down.test could be reached" in item.smtp_response
    nowhere = status_of("ann@nowhere.test")
    assert nowhere.status == S.FAILED
    assert "does not exist" in nowhere.smtp_response
    assert status_of("c@nomail.test").status == S.FAILED
    assert "accepts no mail" in status_of("c@nomail.test").smtp_response
    assert status_of("ok@direct.test").status == S.SENT


def test_a_dns_failure_defers_instead_of_failing(zone: Zone, sink: HeloSink) -> None:
    zone.failing.add("flaky.test")

    send_to(direct_dispatcher(), "ann@flaky.test")

    item = status_of("ann@flaky.test")
    assert item.status == S.DEFERRED
    assert "DNS look-up of flaky.test" in item.smtp_response


def test_the_port_comes_from_settings(zone: Zone, settings: Any) -> None:
    zone.mx("direct.test", "mx1.direct.test")
    zone.a("mx1.direct.test", "127.0.0.1")
    settings.HERALD_DIRECT_SMTP_PORT = free_port()  # nothing there

    send_to(direct_dispatcher(), "ann@direct.test")

    assert status_of("ann@direct.test").status == S.DEFERRED
