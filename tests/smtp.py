"""A real SMTP server for tests: aiosmtpd on a free loopback port.

It counts what it receives and can misbehave on purpose (refuse some
recipients with a code of our choosing), so tests can assert exactly
who got what, and how often."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from config.embedded import free_port

# aiosmtpd logs every SMTP command at INFO; the tests count instead.
logging.getLogger("mail.log").setLevel(logging.WARNING)

RcptRule = Callable[[str], str | None]  # address -> SMTP reply to refuse with, or None


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    raw: bytes = b""  # as it came over the wire


@dataclass
class SinkHandler:
    rcpt_rule: RcptRule | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0
    sessions: Counter = field(default_factory=Counter)  # peer -> messages

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:  # noqa: N802,E501
        reply = self.rcpt_rule(address) if self.rcpt_rule else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.counter += 1
            queue_id = f"Q{self.counter:06d}"
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message, envelope.content)
            )
            self.sessions[session.peer] += 1
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def per_recipient(self) -> Counter[str]:
        with self.lock:
            return Counter(r for item in self.received for r in item.recipients)


class SmtpSink:
    def __init__(
        self, rcpt_rule: RcptRule | None = None, *, handler: SinkHandler | None = None
    ) -> None:
        self.handler = handler or SinkHandler(rcpt_rule=rcpt_rule)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def per_recipient(self) -> Counter[str]:
        return self.handler.per_recipient()


@dataclass
class Faults:
    """Misbehaviour on purpose, decided per address or per session with a
    fixed seed so a failing run can be replayed."""

    soft_rcpt_rate: float = 0.0  # 451 on the first RCPT of these addresses
    drop_session_rate: float = 0.0  # 421 then disconnect, once per chosen session
    bad_mailbox_rate: float = 0.0  # 550 5.1.1, always, for these addresses
    seed: int = 1

    def _pick(self, key: str, rate: float) -> bool:
        return rate > 0 and random.Random(f"{self.seed}:{key}").random() < rate


@dataclass
class FaultyHandler(SinkHandler):
    faults: Faults = field(default_factory=Faults)
    rcpt_attempts: Counter = field(default_factory=Counter)
    sessions_seen: int = 0
    dropped_sessions: int = 0

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:  # noqa: N802,E501
        if not getattr(session, "herald_decided", False):
            session.herald_decided = True
            with self.lock:
                self.sessions_seen += 1
                number = self.sessions_seen
            session.herald_drop = self.faults._pick(
                f"session{number}", self.faults.drop_session_rate
            )
        if session.herald_drop:
            session.herald_drop = False
            with self.lock:
                self.dropped_sessions += 1
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 Service shutting down, closing channel"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:  # noqa: N802,E501
        with self.lock:
            self.rcpt_attempts[address] += 1
            first = self.rcpt_attempts[address] == 1
        if self.faults._pick(f"bad:{address}", self.faults.bad_mailbox_rate):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if first and self.faults._pick(f"soft:{address}", self.faults.soft_rcpt_rate):
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


class FaultySink(SmtpSink):
    def __init__(self, faults: Faults) -> None:
        self.handler = FaultyHandler(faults=faults)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def bad_mailboxes(self, addresses: list[str]) -> set[str]:
        return {
            a
            for a in addresses
            if self.handler.faults._pick(f"bad:{a}", self.handler.faults.bad_mailbox_rate)
        }


@dataclass
class AuthHandler(SinkHandler):
    """A sink that wants a login, and can stop on purpose: refuse every
    login from some moment (a password revoked at the provider), or go
    down in the middle of a session (a server stopped)."""

    username: str = ""
    password: str = ""
    refuse_logins: bool = False
    # Messages still taken before the server goes down; None: it stays up.
    down_after: int | None = None
    controller: Controller | None = None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = bool(
            not self.refuse_logins
            and isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:  # noqa: N802,E501
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        if self.down_after is not None:
            self.down_after -= 1
            if self.down_after <= 0:
                # This message is taken; then the listener and the session close,
                # before the client can start another.
                assert self.controller is not None and self.controller.server is not None
                self.controller.server.close()
                asyncio.get_running_loop().call_soon(server.transport.close)
        return reply


class AuthSink(SmtpSink):
    """aiosmtpd that takes mail only after AUTH PLAIN/LOGIN (without TLS, on
    loopback)."""

    def __init__(self, *, username: str, password: str) -> None:
        self.handler = AuthHandler(username=username, password=password)
        self.port = free_port()
        self.controller = self._controller()

    def _controller(self) -> Controller:
        controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self.handler.authenticate,
            auth_require_tls=False,  # loopback: AUTH without TLS, on purpose
        )
        self.handler.controller = controller
        return controller

    def go_down_after(self, messages: int) -> None:
        self.handler.down_after = messages

    def restart(self) -> None:
        """Back up on the same port, with what it received so far."""
        self.controller.stop()
        self.handler.down_after = None
        self.controller = self._controller()
        self.controller.start()
