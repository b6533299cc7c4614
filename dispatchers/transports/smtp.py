"""SMTP relay through aiosmtplib, behind the synchronous Transport API.

The transport owns a private event loop so one batch reuses one session
for many messages; it never shares the loop with other code. The session
is opened by smtpservers.client with every setting of the server (TLS
mode, CA bundle, AUTH PLAIN/LOGIN, NTLM, XOAUTH2), the same code path as
"Test connection", and what it learns is kept as the server's status.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiosmtplib

from smtpservers.client import SessionError, session_open
from smtpservers.services import (
    connection_status_record_from_send,
    server_record_auth_rejected_from_send,
)

from .base import ConnectionLost, Message, Outcome, SendResult, Transport, message_bytes

if TYPE_CHECKING:
    from smtpservers.models import SmtpServer

_SAFE_ADDRESS = re.compile(rb"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII but < and >
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")

# A message for ``SmtpSession.stream``: (key, data, sender, recipient,
# canonical); the key is the caller's, handed back with the message's
# result. Canonical: the data's line ends are all CRLF already (a
# WireMessage's, by its contract), so DATA need not check them.
Job = tuple[Any, bytes, str, str, bool]
# (key, result, None) for a reply, (key, None, ConnectionLost) for a loss,
# (key, None, the exception) for anything unforeseen.
Report = Callable[[Any, "SendResult | None", "BaseException | None"], None]

_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9.\-_]+)", re.I)
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def result_from_reply(code: int, text: str) -> SendResult:
    enhanced = (_ENHANCED.search(text) or [None, ""])[1]
    if 200 <= code < 300:
        queue_id = (_QUEUE_ID.search(text) or [None, ""])[1]
        return SendResult(Outcome.ACCEPTED, code, text, queue_id=queue_id, enhanced=enhanced)
    outcome = Outcome.TRANSIENT if 400 <= code < 500 else Outcome.PERMANENT
    return SendResult(outcome, code, text, enhanced=enhanced)


def lost_at_421(code: int, text: str) -> ConnectionLost:
    """The server closed the session (421). When it says it did so because
    of the pace, that is this message's verdict; otherwise the session is
    simply gone."""
    result = result_from_reply(code, text)
    return ConnectionLost(f"{code} {text}", result=result if result.throttled else None)


class SmtpSession:
    """One SMTP session driven on the caller's running event loop: what the
    synchronous SmtpTransport wraps, and what a SendPool drives several of
    on one loop. Recording the server's status is a database write, so it
    is left to the caller, outside the loop (``session_recorded``)."""

    def __init__(self, *, server: SmtpServer) -> None:
        self.server = server
        self.client: aiosmtplib.SMTP | None = None
        self.banner = ""
        self.lost = False  # the session died in ``stream``: close it, open another

    async def open(self) -> None:
        """Raises SessionError (recorded by ``session_recorded``) or
        ConnectionLost."""
        server = self.server
        if not server.is_active:
            raise ConnectionLost(
                f"The SMTP server “{server.name}” is inactive; activate it to send through it.",
                retry_pointless=True,
            )
        try:
            session = await session_open(server)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise ConnectionLost(_describe(exc)) from exc
        self.client, self.banner = session.client, session.banner

    async def send(self, data: bytes, *, sender: str, recipient: str) -> SendResult:
        assert self.client is not None, "open() first"
        if self.streams(sender, recipient):
            outcome: list[tuple[SendResult | None, BaseException | None]] = []
            await self.stream(
                (None, data, sender, recipient, False),
                take=lambda: None,
                report=lambda _, result, lost: outcome.append((result, lost)),
            )
            result, lost = outcome[0]
            if lost is not None:
                raise lost
            assert result is not None
            return result
        return await sendmail(self.client, sender, recipient, data)

    def streams(self, sender: str, recipient: str) -> bool:
        """Whether ``stream`` can carry this message: the server offers
        PIPELINING and both addresses go on the wire as they are."""
        return (
            self._pipelining
            and _SAFE_ADDRESS.fullmatch(sender.encode()) is not None
            and _SAFE_ADDRESS.fullmatch(recipient.encode()) is not None
        )

    @property
    def _pipelining(self) -> bool:
        # RFC 2920: MAIL, RCPT and DATA go in one write, their replies come
        # back together: half the round trips and writes of one command at a
        # time, which is most of what sending costs on a fast link.
        client = self.client
        return client is not None and client.supports_extension("pipelining")

    async def stream(
        self, job: Job, *, take: Callable[[], Job | None], report: Report
    ) -> Job | None:
        """Send ``job``, then every job ``take`` has ready at once, each
        next envelope (MAIL, RCPT, DATA) in the same write as the message
        before it and its final dot (RFC 2920: the dot is the last command
        of a group, so both travel together): one write and one round trip
        a message instead of two. Each job's result goes to ``report`` as
        its reply is read. Call only when ``streams`` says so.

        A lost session reports ConnectionLost for every job not settled:
        maybe delivered for the one whose final dot went out unanswered,
        not delivered for one whose envelope only went out; ``lost`` is set
        then and the session is of no further use. Returns a job ``take``
        gave that cannot be streamed (for ``send``), or None."""
        assert self.client is not None and self.client.transport is not None
        transport = self.client.transport
        own = transport.get_protocol()
        replies = _Replies(self.server.timeout)
        transport.set_protocol(replies)  # aiosmtplib's own gets it back after
        current, following = job, None  # following: an envelope sent behind current's dot
        leftover: Job | None = None  # taken, cannot be streamed: handed back
        data_sent = False
        try:
            if transport.is_closing():
                raise ConnectionLost("The SMTP server closed the connection")
            transport.write(_envelope(current))
            while True:
                refusal = await self._envelope_replies(replies, transport)
                if refusal is not None:
                    report(current[0], refusal, None)
                    following = take()
                    if following is None or not self.streams(following[2], following[3]):
                        return following
                    current, following = following, None
                    transport.write(_envelope(current))
                    continue
                following = take()
                if following is not None and not self.streams(following[2], following[3]):
                    leftover, following = following, None
                data = _dotted(current[1], canonical=current[4])
                transport.write(data + (_envelope(following) if following else b""))
                data_sent = True
                code, text = await replies.next()
                if code == 421:  # not taken: the server is closing the session
                    data_sent = False
                    raise lost_at_421(code, text)
                report(current[0], result_from_reply(code, text), None)
                if following is None:
                    return leftover
                current, following, data_sent = following, None, False
        except Exception as exc:  # noqa: BLE001 - every job taken gets an answer, or its caller waits
            self.lost = True
            if isinstance(exc, TimeoutError | OSError):
                exc = ConnectionLost(_describe(exc))
            unanswered = [
                (current[0], data_sent),
                *((j[0], False) for j in (following, leftover) if j is not None),
            ]
            if isinstance(exc, ConnectionLost) and exc.result is not None:
                # A 421 that says "too fast": a verdict on this message (its
                # provider slows down); the session is gone all the same.
                report(current[0], exc.result, None)
                unanswered = unanswered[1:]
            for key, maybe_delivered in unanswered:
                report(
                    key,
                    None,
                    _lost(exc, maybe_delivered) if isinstance(exc, ConnectionLost) else exc,
                )
            return None
        finally:
            replies.stop()
            transport.set_protocol(own)
            if replies.closed is not None:
                own.connection_lost(replies.closed)

    @staticmethod
    async def _envelope_replies(
        replies: _Replies, transport: asyncio.Transport
    ) -> SendResult | None:
        """Read the replies to MAIL, RCPT and DATA: None when the server
        waits for the message (354), else the refusal, the transaction
        reset. A 421 raises ConnectionLost: nothing was delivered."""
        envelope = [await replies.next() for _ in range(3)]
        refusal = next(((c, t) for c, t in envelope[:2] if not 200 <= c < 300), None)
        if refusal is None and envelope[2][0] != 354:
            refusal = envelope[2]
        if refusal is None:
            return None
        if refusal[0] == 421:
            raise lost_at_421(*refusal)
        if envelope[2][0] == 354:  # a server that took DATA anyway: end it empty
            transport.write(b".\r\n")
            await replies.next()
        transport.write(b"RSET\r\n")
        await replies.next()
        return result_from_reply(*refusal)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit()
        except Exception:  # noqa: BLE001 - closing must never fail a batch
            client.close()


def session_recorded(session: SmtpSession, error: BaseException | None) -> None:
    """Keep what opening a session taught about the server (its status, a
    rejected login that stops its dispatchers), and turn a SessionError into
    the ConnectionLost the caller raises. A database write: call it off the
    event loop."""
    server = session.server
    if error is None:
        connection_status_record_from_send(
            server=server, ok=True, message=f"OK (last real send). Banner: {session.banner}"
        )
        return
    if not isinstance(error, SessionError):
        raise error
    if error.auth_rejected:
        # Every dispatcher on the server stops, and the notification
        # says what to do (Generate tokens again, or the password).
        server_record_auth_rejected_from_send(server=server, error=str(error))
    else:
        connection_status_record_from_send(
            server=server, ok=False, message=f"Sending failed at {error.step}: {error}"
        )
    raise ConnectionLost(str(error), retry_pointless=error.auth_rejected) from error


class SmtpTransport(Transport):
    """An SmtpSession behind the synchronous Transport API, on a private loop."""

    def __init__(self, *, server: SmtpServer) -> None:
        self.server = server
        self._session = SmtpSession(server=server)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self, coro):  # type: ignore[no-untyped-def]
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._run(self._session.open())
        except SessionError as exc:
            self.close()
            session_recorded(self._session, exc)
        except ConnectionLost:
            self.close()
            raise
        session_recorded(self._session, None)

    @property
    def _client(self) -> aiosmtplib.SMTP | None:
        return self._session.client

    @property
    def _pipelining(self) -> bool:
        return self._session._pipelining

    def send(self, message: Message, *, sender: str, recipient: str) -> SendResult:
        assert self._session.client is not None, "open() first"
        return self._run(
            self._session.send(message_bytes(message), sender=sender, recipient=recipient)
        )

    def close(self) -> None:
        if self._loop is not None:
            self._run(self._session.close())
            self._loop.close()
        self._loop = None


async def sendmail(client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes) -> SendResult:
    """One message on an open session. Raises ConnectionLost when the
    session is gone (421 or a drop); ``maybe_delivered`` says whether the
    server may already have taken the message: only once DATA has begun.
    A session that ends before (a server that closed it after the last
    message, or went down) cannot have taken this one."""
    try:
        await client.mail(sender)
        await client.rcpt(recipient)
    except aiosmtplib.SMTPResponseException as exc:
        return await _refused(client, exc)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise ConnectionLost(_describe(exc)) from exc
    try:
        reply = await client.data(data)
    except aiosmtplib.SMTPResponseException as exc:
        return await _refused(client, exc)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise ConnectionLost(_describe(exc), maybe_delivered=True) from exc
    return result_from_reply(reply.code, reply.message)


async def _refused(client: aiosmtplib.SMTP, exc: aiosmtplib.SMTPResponseException) -> SendResult:
    """The server's answer to this message; the session is ready for the next."""
    if exc.code == 421:
        raise lost_at_421(exc.code, exc.message) from exc
    try:
        await client.rset()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass  # the session is gone: the next message finds out, before its DATA
    return result_from_reply(exc.code, exc.message)


def _envelope(job: Job) -> bytes:
    return f"MAIL FROM:<{job[2]}>\r\nRCPT TO:<{job[3]}>\r\nDATA\r\n".encode()


def _dotted(data: bytes, *, canonical: bool = False) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled,
    the final dot. ``canonical``: its line ends are known to be CRLF."""
    # Counting and finding are C loops; the substitutions a third of what a
    # session costs a message: only for the rare message that needs them.
    # The three counts alone were 8 us of a 5 KB message (4% of a sending
    # worker's CPU), hence the caller's word for it when it has one.
    if not canonical:
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            data = _LINE_ENDS.sub(b"\r\n", data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n")


def _lost(lost: ConnectionLost, maybe_delivered: bool) -> ConnectionLost:
    return ConnectionLost(
        str(lost), maybe_delivered=maybe_delivered, retry_pointless=lost.retry_pointless
    )


class _Replies(asyncio.Protocol):
    """SMTP replies read in order, however many arrive in one segment (what
    aiosmtplib's protocol cannot do: it expects one reply per command)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.buffer = bytearray()
        self.replies: deque[tuple[int, str]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed: Exception | None = None
        self.deadline = 0.0
        self.watchdog: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (reply := self._parse()) is not None:
            self.replies.append(reply)
        self._wake()

    def _parse(self) -> tuple[int, str] | None:
        lines, offset = [], 0
        while True:
            end = self.buffer.find(b"\n", offset)
            if end == -1:
                return None  # not a whole reply yet
            line = bytes(self.buffer[offset : end + 1])
            offset = end + 1
            lines.append(line)
            if line[3:4] != b"-":
                break
        del self.buffer[:offset]
        try:
            code = int(lines[0][:3])
        except ValueError:
            code = 0  # garbage: neither 2xx, 4xx nor 5xx, so refused as permanent
        text = "\n".join(line[4:].strip().decode("utf-8", "replace") for line in lines)
        return code, text

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ConnectionResetError("The SMTP server closed the connection")
        self._wake()

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> tuple[int, str]:
        """The next reply; TimeoutError when none came within ``timeout``."""
        if self.replies:
            return self.replies.popleft()
        loop = asyncio.get_running_loop()
        while not self.replies:
            if self.closed is not None:
                raise ConnectionResetError(str(self.closed))
            self.waiter = loop.create_future()
            # A deadline to meet, checked by one timer at most a timeout
            # period: a timer armed and cancelled for every reply cost
            # a sixth of what a session spends on a message.
            self.deadline = loop.time() + self.timeout
            if self.watchdog is None:
                self.watchdog = loop.call_at(self.deadline, self._check)
            await self.waiter
        return self.replies.popleft()

    def _check(self) -> None:
        self.watchdog = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # nothing waited for: the next wait arms a timer again
        loop = waiter.get_loop()
        if loop.time() >= self.deadline:
            waiter.set_exception(TimeoutError(f"No reply within {self.timeout:g} seconds"))
        else:
            self.watchdog = loop.call_at(self.deadline, self._check)

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", "") or str(exc) or type(exc).__name__
    return f"{code} {text}" if code else text
