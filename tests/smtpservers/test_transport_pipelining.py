"""SMTP relay to a server that offers PIPELINING (RFC 2920), as Postfix
does: the envelope goes in one write, and every outcome a one-command-at-
a-time session gives must come out the same."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from campaigns import services
from campaigns.models import Campaign, CampaignItem
from dispatchers.transports import ConnectionLost, Outcome
from dispatchers.transports.base import WireMessage
from dispatchers.transports.smtp import SmtpTransport
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import RcptRule, SinkHandler, free_port

pytestmark = pytest.mark.django_db


class PipeliningHandler(SinkHandler):
    """The test sink, announcing PIPELINING and counting sessions."""

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class PipeliningSink:
    def __init__(self, rcpt_rule: RcptRule | None = None) -> None:
        self.handler = PipeliningHandler(rcpt_rule=rcpt_rule)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> PipeliningHandler:
        self.controller.start()
        return self.handler

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def refuse(address: str) -> str | None:
    if address.startswith("gone@"):
        return "550 5.1.1 No such user"
    if address.startswith("busy@"):
        return "451 4.7.1 Try again later"
    if address.startswith("closing@"):
        return "421 4.3.2 Shutting down"
    return None


@pytest.fixture
def sink() -> Iterator[tuple[PipeliningHandler, int]]:
    server = PipeliningSink(rcpt_rule=refuse)
    with server as handler:
        yield handler, server.port


def wire(recipient: str, body: bytes = b"Hello.\r\n") -> WireMessage:
    head = f"From: news@example.org\r\nTo: {recipient}\r\nSubject: Hi\r\n\r\n".encode()
    return WireMessage(head + body, {"To": recipient})


def test_the_server_offers_pipelining_and_the_transport_uses_it(sink) -> None:
    handler, port = sink
    with SmtpTransport(server=make_smtp_server(port=port)) as transport:
        assert transport._pipelining
        result = transport.send(
            wire("ann@example.net"), sender="b@example.org", recipient="ann@example.net"
        )

    assert result.outcome is Outcome.ACCEPTED and result.code == 250
    assert result.queue_id.startswith("Q")
    assert handler.per_recipient() == {"ann@example.net": 1}


def test_refusals_come_back_per_recipient_and_the_session_goes_on(sink) -> None:
    handler, port = sink
    with SmtpTransport(server=make_smtp_server(port=port)) as transport:
        results = [
            transport.send(wire(address), sender="b@example.org", recipient=address)
            for address in ("gone@example.net", "busy@example.net", "ann@example.net")
        ]

    assert [(r.outcome, r.code, r.enhanced) for r in results] == [
        (Outcome.PERMANENT, 550, "5.1.1"),
        (Outcome.TRANSIENT, 451, "4.7.1"),
        (Outcome.ACCEPTED, 250, "2.0.0"),
    ]
    assert handler.per_recipient() == {"ann@example.net": 1}
    assert sum(handler.sessions.values()) == 1  # one session for all three


def test_a_421_ends_the_session_with_nothing_delivered(sink) -> None:
    handler, port = sink
    with SmtpTransport(server=make_smtp_server(port=port)) as transport:
        with pytest.raises(ConnectionLost) as lost:
            transport.send(
                wire("closing@example.net"), sender="b@example.org", recipient="closing@example.net"
            )

    assert "421" in str(lost.value) and not lost.value.maybe_delivered
    assert handler.received == []


def test_lines_starting_with_a_dot_and_bare_line_ends_arrive_intact(sink) -> None:
    handler, port = sink
    body = b".\r\n..two dots\r\n.hidden\r\nbare\nline\rends\r\nno final line end"
    with SmtpTransport(server=make_smtp_server(port=port)) as transport:
        transport.send(
            wire("ann@example.net", body), sender="b@example.org", recipient="ann@example.net"
        )

    received = handler.received[0].raw
    assert received.endswith(
        b".\r\n..two dots\r\n.hidden\r\nbare\r\nline\r\nends\r\nno final line end\r\n"
    )


def test_a_campaign_through_a_pipelining_server_reaches_everyone_once(sink) -> None:
    handler, port = sink
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=port), connections=3)
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(40)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert handler.per_recipient() == {f"user{i}@example.org": 1 for i in range(40)}
    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        CampaignItem.Status.SENT
    }
    assert str(handler.received[0].message["Subject"]).startswith("Hello First")
