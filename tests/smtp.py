"""A real SMTP server for tests: aiosmtpd on a free loopback port.

It counts what it receives and can misbehave on purpose (refuse some
recipients with a code of our choosing), so tests can assert exactly
who got what, and how often."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

RcptRule = Callable[[str], str | None]  # address -> SMTP reply to refuse with, or None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class SinkHandler:
    rcpt_rule: RcptRule | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:  # noqa: N802,E501
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
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def per_recipient(self) -> Counter[str]:
        with self.lock:
            return Counter(r for item in self.received for r in item.recipients)


class SmtpSink:
    def __init__(self, rcpt_rule: RcptRule | None = None) -> None:
        self.handler = SinkHandler(rcpt_rule=rcpt_rule)
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
