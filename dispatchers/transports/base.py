"""The one small interface every delivery mode implements.

A transport is opened once per batch, handed finished messages, and
answers each with a SendResult. It knows nothing of campaigns: whoever
asks gets a per-recipient verdict with the server's own code and text.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from dispatchers.models import Dispatcher


# How messages go on the wire (and are DKIM-signed): CRLF line ends, and no
# refolding of long header values. With the default 78-column limit the
# email package turns a long List-Unsubscribe URL into RFC 2047 encoded
# words, which mailbox providers cannot use; RFC 5322 allows 998.
WIRE_POLICY = SMTP.clone(max_line_length=998)


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    TRANSIENT = "transient"  # 4xx: try again later
    PERMANENT = "permanent"  # 5xx: do not try again


# What mailbox providers say when one sender goes too fast: Gmail's
# 4.7.28 and 421-4.7.0 "try again later", Microsoft's 4.7.500 "Server
# busy", Yahoo's TSS04, and the generic texts of other servers.
# Greylisting also says "try again later" but is about the sender, not
# the pace: it is an ordinary deferral.
_THROTTLE_TEXT = re.compile(
    r"rate.?limit|try again later|too many|throttl|deferred due to|server busy|"
    r"temporarily deferred|\bTSS?0\d\b|\b4\.7\.(28|500)\b",
    re.IGNORECASE,
)
_NOT_THROTTLE = re.compile(r"gr[ae]ylist", re.IGNORECASE)
_THROTTLE_CODES = (421, 450, 451, 452)


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    text: str = ""
    queue_id: str = ""
    enhanced: str = ""  # RFC 3463 status, e.g. "5.1.1"

    @property
    def throttled(self) -> bool:
        """A 4xx telling the sender to slow down (the message itself is fine)."""
        return (
            self.outcome is Outcome.TRANSIENT
            and self.code in _THROTTLE_CODES
            and _THROTTLE_TEXT.search(self.text) is not None
            and _NOT_THROTTLE.search(self.text) is None
        )


class ConnectionLost(Exception):
    """The session is gone (dropped, timed out, 421, refused login).

    Nothing was recorded for the message being sent: the caller puts it and
    the rest of its batch back untouched. ``maybe_delivered`` is False when
    the server clearly refused before taking the message (421 at RCPT, a
    failed connect), True when the session died mid-transaction.
    ``retry_pointless`` is True when trying again cannot help until an
    administrator acts (login rejected, server deactivated). ``result`` is
    set when the server closed the session with a verdict on this one
    message (421 "rate limited"): it is recorded, and the rest of the
    batch goes on over a new session."""

    def __init__(
        self,
        message: str,
        *,
        maybe_delivered: bool = False,
        retry_pointless: bool = False,
        result: SendResult | None = None,
    ) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered
        self.retry_pointless = retry_pointless
        self.result = result


class WireMessage:
    """A finished message already in its wire form: CRLF line ends, headers
    folded and encoded, bodies transfer-encoded (what ``message_bytes``
    of an EmailMessage gives), plus its top-level header values, decoded,
    for look-ups. Building bytes directly is ~15 times cheaper than
    EmailMessage, which is what lets one core build 10,000 messages/s.

    Transports need only ``message_bytes(message)`` and
    ``message.get(name)``; ``parsed()`` gives an EmailMessage when code
    wants the parts (previews, tests)."""

    __slots__ = ("data", "_headers")

    def __init__(self, data: bytes, headers: dict[str, str]) -> None:
        self.data = data
        self._headers = {name.lower(): value for name, value in headers.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:  # like EmailMessage: None if absent
        return self._headers.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._headers

    def with_header_line(self, name: str, value: str, line: bytes) -> WireMessage:
        """A copy with ``line`` (a complete, folded header ending in CRLF)
        put first, e.g. a DKIM-Signature computed over these bytes."""
        return WireMessage(line + self.data, {**self._headers, name.lower(): value})

    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=default).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message

    def __repr__(self) -> str:
        return f"<WireMessage {self.get('Message-ID')} {len(self.data)} bytes>"


# What transports are handed: the pipeline sends WireMessages; other callers
# (tests, one-off notices) may still build an EmailMessage.
Message = WireMessage | EmailMessage


def message_bytes(message: Message) -> bytes:
    """The wire form of a message. Transports read bytes only through this
    and headers only through ``message.get(name)``, so they take a
    WireMessage or an EmailMessage alike."""
    if isinstance(message, WireMessage):
        return message.data
    return message.as_bytes(policy=WIRE_POLICY)


class Transport:
    def open(self) -> None:
        """Connect; raise ConnectionLost when the server cannot be used."""

    def send(self, message: Message, *, sender: str, recipient: str) -> SendResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection; never raises."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transport_for(dispatcher: Dispatcher) -> Transport:
    from .backup import BackupTransport

    transport = _mode_transport(dispatcher)
    if dispatcher.backup_directory:
        return BackupTransport(transport, path=dispatcher.backup_directory)
    return transport


def _mode_transport(dispatcher: Dispatcher) -> Transport:
    from .esp import ApiTransport
    from .mx import DirectTransport
    from .pickup import PickupTransport
    from .smtp import SmtpTransport

    mode = dispatcher.delivery_mode
    if mode == dispatcher.DeliveryMode.PICKUP:
        return PickupTransport(directory=dispatcher.pickup_directory)
    if mode == dispatcher.DeliveryMode.DIRECT:
        return DirectTransport(helo_name=dispatcher.helo_name)
    if mode == dispatcher.DeliveryMode.API:
        return ApiTransport.for_dispatcher(dispatcher)
    return SmtpTransport(server=dispatcher.smtp_server)
