"""SMTP relay to a server that offers PIPELINING (RFC 2920), as Postfix
does: the envelope goes in one write, the next message's envelope with
the final dot of the one before, and every outcome a one-command-at-a-
time session gives must come out the same; a session lost between a
final dot and its reply leaves exactly that message in doubt."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from campaigns import services
from campaigns.models import Campaign, CampaignItem
from dispatchers.models import Dispatcher
from dispatchers.transports import ConnectionLost, Outcome
from dispatchers.transports.base import WireMessage
from dispatchers.transports.smtp import Job, SmtpSession, SmtpTransport
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import RcptRule, Received, SinkHandler, free_port

pytestmark = pytest.mark.django_db


class PipeliningHandler(SinkHandler):
    """The test sink, announcing PIPELINING and counting sessions."""

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class DroppingHandler(PipeliningHandler):
    """Drops the connection once, right after the final dot of message
    number ``drop_at`` (counted from 1) arrived, before any reply: the
    message is taken (the server keeps it), the client never hears so."""

    drop_at = 0
    dropped: Received | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        if self.dropped is None and self.counter == self.drop_at:
            self.dropped = self.received[-1]
            server.transport.abort()
        return reply


class PipeliningSink:
    def __init__(
        self, rcpt_rule: RcptRule | None = None, handler: PipeliningHandler | None = None
    ) -> None:
        self.handler = handler or PipeliningHandler(rcpt_rule=rcpt_rule)
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


def campaign_to(port: int, *, recipients: int, connections: int) -> tuple[Dispatcher, Campaign]:
    """A sending campaign with its items, through a dispatcher to ``port``."""
    dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=port), connections=connections)
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(recipients)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return dispatcher, campaign


def test_a_campaign_through_a_pipelining_server_reaches_everyone_once(sink) -> None:
    handler, port = sink
    dispatcher, campaign = campaign_to(port, recipients=40, connections=3)

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert handler.per_recipient() == {f"user{i}@example.org": 1 for i in range(40)}
    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        CampaignItem.Status.SENT
    }
    assert str(handler.received[0].message["Subject"]).startswith("Hello First")


def test_a_campaign_line_starting_with_a_dot_arrives_intact_through_the_pool(sink) -> None:
    handler, port = sink
    dispatcher, campaign = campaign_to(port, recipients=3, connections=2)
    campaign.template.text_body = ".hidden\n..two dots\nDear {{ contact.first_name }}\n.\nend\n"
    campaign.template.save()

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert handler.per_recipient() == {f"user{i}@example.org": 1 for i in range(3)}
    text = handler.received[0].message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith(".hidden\n..two dots\nDear First")
    assert "\n.\nend\n" in text  # a lone dot is not the end of the message


# --- several messages streamed on one session ----------------------------------


def stream(port: int, jobs: list[Job], timeout: int = 10) -> list[tuple[object, object, object]]:
    """SmtpSession.stream over ``jobs`` (all ready at once) on a fresh event
    loop: the reports in the order they came."""
    server = make_smtp_server(port=port, timeout=timeout)
    reports: list[tuple[object, object, object]] = []
    waiting = list(jobs)

    async def run() -> None:
        session = SmtpSession(server=server)
        await session.open()
        assert session.streams("b@example.org", "ann@example.net")
        leftover = await session.stream(
            waiting.pop(0),
            take=lambda: waiting.pop(0) if waiting else None,
            report=lambda key, result, lost: reports.append((key, result, lost)),
        )
        assert leftover is None
        await session.close()

    asyncio.run(run())
    return reports


def job(n: int, recipient: str | None = None) -> Job:
    recipient = recipient or f"user{n}@example.net"
    return (n, b"Subject: Hi\r\n\r\nHello.\r\n", "b@example.org", recipient, True)


class HoldingServer:
    """A bare SMTP server that answers a message's final dot only once the
    next message's MAIL FROM has arrived (up to ``expected`` messages): a
    client that waits for each reply before sending on never gets one."""

    def __init__(self, expected: int, *, mute_at: int = 0) -> None:
        self.expected = expected
        self.mute_at = mute_at  # never answer this message's final dot
        self.port = free_port()
        self.messages = 0
        self.sessions = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HoldingServer:
        self.thread.start()
        self.ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(b"220 holding ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-holding\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                while await reader.readline() != b".\r\n":
                    pass
                self.messages += 1
                if self.messages == self.mute_at:
                    await reader.read()  # until the client gives up
                    break
                if self.messages < self.expected:
                    # Only a pipelining client has sent the next MAIL already.
                    following = await reader.readline()
                    assert following.upper().startswith(b"MAIL FROM:")
                    writer.write(f"250 2.0.0 queued as H{self.messages}\r\n".encode())
                    writer.write(b"250 2.1.0 OK\r\n")
                else:
                    writer.write(f"250 2.0.0 queued as H{self.messages}\r\n".encode())
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 OK\r\n")
        writer.close()


def test_each_next_envelope_goes_out_with_the_final_dot_before_it() -> None:
    with HoldingServer(expected=5) as server:
        reports = stream(server.port, [job(n) for n in range(1, 6)])

    assert [(key, result.queue_id) for key, result, _ in reports] == [
        (n, f"H{n}") for n in range(1, 6)
    ]
    assert server.messages == 5 and server.sessions == 1


def test_a_final_dot_never_answered_leaves_that_message_in_doubt_after_the_timeout() -> None:
    with HoldingServer(expected=5, mute_at=3) as server:
        reports = stream(server.port, [job(n) for n in range(1, 6)], timeout=1)

    assert [(key, result.queue_id) for key, result, _ in reports[:2]] == [(1, "H1"), (2, "H2")]
    (key, result, lost), (next_key, next_result, next_lost) = reports[2:]
    assert (key, result, next_key, next_result) == (3, None, 4, None)
    assert lost.maybe_delivered and not next_lost.maybe_delivered
    assert server.messages == 3


def test_a_streamed_session_reports_every_message_in_order_refusals_included(sink) -> None:
    handler, port = sink
    recipients = ["ann@example.net", "gone@example.net", "bob@example.net", "busy@example.net"]
    recipients += ["cy@example.net"]
    reports = stream(port, [job(n, r) for n, r in enumerate(recipients)])

    assert [(key, result.outcome, result.code) for key, result, _ in reports] == [
        (0, Outcome.ACCEPTED, 250),
        (1, Outcome.PERMANENT, 550),
        (2, Outcome.ACCEPTED, 250),
        (3, Outcome.TRANSIENT, 451),
        (4, Outcome.ACCEPTED, 250),
    ]
    assert all(lost is None for _, _, lost in reports)
    assert handler.per_recipient() == {
        "ann@example.net": 1,
        "bob@example.net": 1,
        "cy@example.net": 1,
    }
    assert len(handler.sessions) == 1  # one session for all five


def test_a_421_in_a_streamed_envelope_ends_the_session_with_nothing_more_delivered(sink) -> None:
    handler, port = sink
    recipients = ["ann@example.net", "closing@example.net", "bob@example.net"]
    reports = stream(port, [job(n, r) for n, r in enumerate(recipients)])

    assert reports[0][1].outcome is Outcome.ACCEPTED
    key, result, lost = reports[1]
    assert key == 1 and result is None and "421" in str(lost) and not lost.maybe_delivered
    assert len(reports) == 2  # the third was never taken
    assert handler.per_recipient() == {"ann@example.net": 1}


@pytest.fixture
def dropping() -> Iterator[tuple[DroppingHandler, int]]:
    handler = DroppingHandler()
    handler.drop_at = 3
    server = PipeliningSink(handler=handler)
    with server as handler:
        yield handler, server.port


def test_a_session_lost_after_a_final_dot_leaves_only_that_message_in_doubt(dropping) -> None:
    handler, port = dropping
    reports = stream(port, [job(n) for n in range(1, 7)])

    assert [(key, result.outcome) for key, result, _ in reports[:2]] == [
        (1, Outcome.ACCEPTED),
        (2, Outcome.ACCEPTED),
    ]
    # The third was taken by the server, its reply never came: in doubt.
    key, result, lost = reports[2]
    assert (key, result) == (3, None) and lost.maybe_delivered
    # The fourth's envelope went out with that dot: lost, but not delivered.
    key, result, lost = reports[3]
    assert (key, result) == (4, None) and not lost.maybe_delivered
    assert len(reports) == 4
    assert handler.dropped.recipients == ["user3@example.net"]
    assert handler.per_recipient() == {f"user{n}@example.net": 1 for n in (1, 2, 3)}


def test_a_batch_whose_session_drops_after_a_final_dot_flags_that_item_and_sends_it_again(
    dropping,
) -> None:
    handler, port = dropping
    dispatcher, campaign = campaign_to(port, recipients=12, connections=1)

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    (in_doubt,) = handler.dropped.recipients
    items = CampaignItem.objects.filter(campaign=campaign)
    dropped = items.get(contact__email=in_doubt)
    assert dropped.status == CampaignItem.Status.PENDING and dropped.possibly_duplicated
    assert set(items.filter(possibly_duplicated=True)) == {dropped}
    assert items.filter(status=CampaignItem.Status.SENT).count() >= 2

    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)

    # Everyone once, but the one in doubt: twice, and flagged so.
    expected = {f"user{i}@example.org": 1 for i in range(12)} | {in_doubt: 2}
    assert handler.per_recipient() == expected
    assert set(items.values_list("status", flat=True)) == {CampaignItem.Status.SENT}
    assert set(items.filter(possibly_duplicated=True)) == {dropped}
