"""Reading what comes back to the bounce mailbox: pure functions, no database.

``message_parse`` turns one raw message into a :class:`Report`: what kind
of message it is (a delivery failure, a complaint, an auto-reply or
something we do not recognise) and, per failed recipient, an
:class:`Event` with its class, status code and raw diagnostic, plus the
clues that let the caller find the item it was about (the envelope
addresses the report was delivered to, for the VERP token; the
Message-ID of the returned message; the recipient address).

Order of trust: an RFC 3464 DSN or an RFC 5965 feedback report says
exactly what happened; flufl.bounce's detectors read the many
non-standard formats; auto-replies are recognised so they are not taken
for bounces. Anything else is ``UNRECOGNISED``, which the caller keeps.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

UNSUBSCRIBE_PREFIX = "unsubscribe+"


class Kind(enum.StrEnum):
    """The class of one event (the values match Bounce.Kind)."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    UNKNOWN = "unknown"


class Verdict(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELAY = "delay"  # a DSN that only says "still trying"
    AUTO_REPLY = "auto_reply"
    UNSUBSCRIBE = "unsubscribe"  # a mail to a List-Unsubscribe mailto: address
    UNRECOGNISED = "unrecognised"


@dataclass(frozen=True)
class Event:
    recipient: str
    kind: Kind
    status: str = ""  # the enhanced status code, e.g. 5.1.1
    action: str = ""  # the DSN action (failed, delayed), or "complaint"
    diagnostic: str = ""


@dataclass(frozen=True)
class Report:
    verdict: Verdict
    events: tuple[Event, ...] = ()
    # Where the report was delivered (a VERP return path among them),
    # best clue first.
    envelope_addresses: tuple[str, ...] = ()
    # The Message-ID of the message that bounced, without brackets.
    original_message_id: str = ""
    subject: str = ""
    detector: str = ""  # what recognised it: dsn, arf, flufl, auto-reply
    notes: tuple[str, ...] = field(default=())


# --- classification -----------------------------------------------------------

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<![\d.])([245])\d\d(?=[ :-]|$)", re.MULTILINE)
# Mailbox full or over quota is the recipient's temporary problem, whatever
# code the server chose (Gmail says 5.2.2, others 5.0.0 or plain 552).
_MAILBOX_FULL = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|exceeded (the|its|their)? ?storage"
    r"|insufficient (system )?storage|mailbox size limit",
    re.IGNORECASE,
)
# Permanent codes that say nothing about the address: the message was too
# big, or a policy (spam, reputation, DMARC) refused it this time.
_SOFT_PERMANENT = {"5.2.2", "5.2.3", "5.3.4"}


def status_find(text: str) -> str:
    """The first enhanced status code in text ("5.1.1"), or ""."""
    match = _ENHANCED.search(text or "")
    return ".".join(match.groups()) if match else ""


def classify(status: str, diagnostic: str = "") -> Kind:
    """Hard, soft or unknown, from the enhanced status code and, failing
    that, the SMTP reply code in the diagnostic."""
    if _MAILBOX_FULL.search(diagnostic or ""):
        return Kind.SOFT
    status = status.strip() or status_find(diagnostic)
    if not status:
        basic = _BASIC.search(diagnostic or "")
        if basic is None:
            return Kind.UNKNOWN
        return Kind.HARD if basic.group(1) == "5" else Kind.SOFT
    if status.startswith("4."):
        return Kind.SOFT
    if status.startswith("5."):
        if status in _SOFT_PERMANENT or status.startswith("5.7."):
            return Kind.SOFT
        return Kind.HARD
    return Kind.UNKNOWN  # 2.x.x in a failure report makes no sense


# --- helpers ------------------------------------------------------------------


def _unfold(value: object) -> str:
    return re.sub(r"\s*\r?\n\s*", " ", str(value or "")).strip()


def _address(value: str) -> str:
    """The address of "rfc822; <jane@example.org>" or "Jane <jane@...>"."""
    value = _unfold(value)
    if ";" in value:
        value = value.split(";", 1)[1]
    return parseaddr(value.strip())[1].strip().lower()


def _header_addresses(msg: Message, names: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for name in names:
        for value in msg.get_all(name) or []:
            for _, address in getaddresses([_unfold(value)]):
                address = address.strip().lower()
                if address and address not in found:
                    found.append(address)
    return found


_ENVELOPE_HEADERS = (
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Rcpt-To",
    "To",
)


def _message_id(value: object) -> str:
    match = re.search(r"<([^<>\s]+)>", str(value or ""))
    return match.group(1) if match else str(value or "").strip()


def _returned_headers(msg: Message) -> Message | None:
    """The headers of the message that bounced: a message/rfc822 part, a
    text/rfc822-headers part, or a message/rfc822-headers part."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
        if ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            raw = part.get_payload(decode=True) or b""
            return HeaderParser().parsestr(raw.decode("utf-8", "replace"))
    return None


def _clues(msg: Message) -> tuple[tuple[str, ...], str]:
    addresses = _header_addresses(msg, _ENVELOPE_HEADERS)
    original = _returned_headers(msg)
    message_id = ""
    if original is not None:
        message_id = _message_id(original.get("Message-ID"))
        for address in _header_addresses(original, ("Return-Path",)):
            if address not in addresses:
                addresses.append(address)
    return tuple(addresses), message_id


def _subject(msg: Message) -> str:
    return _unfold(msg.get("Subject", ""))[:255]


# --- RFC 3464 delivery status notifications -----------------------------------


def _report_part(msg: Message, ctype: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            return part
    return None


def _status_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status part (the first is
    per message, the rest per recipient)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return list(payload)
    # Some servers send it base64 or as a plain string; parse the blocks.
    raw = part.get_payload(decode=True) or str(payload).encode()
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return [HeaderParser().parsestr(block + "\n") for block in re.split(r"\n\s*\n", text)]


def _dsn_events(part: Message) -> tuple[list[Event], bool]:
    """Per-recipient events of failed deliveries, and whether any
    recipient was only delayed."""
    events: list[Event] = []
    delayed = False
    for block in _status_blocks(part)[1:]:
        recipient = _address(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        action = _unfold(block.get("Action")).lower()
        if not recipient or not action:
            continue
        if action == "delayed":
            delayed = True
        if action != "failed":
            continue  # delivered, relayed, expanded or delayed: not a failure
        status = status_find(_unfold(block.get("Status")))
        diagnostic = _unfold(block.get("Diagnostic-Code"))
        events.append(
            Event(
                recipient=recipient,
                kind=classify(status, diagnostic),
                status=status,
                action=action,
                diagnostic=diagnostic,
            )
        )
    return events, delayed


def _dsn_parse(msg: Message) -> Report | None:
    part = _report_part(msg, "message/delivery-status")
    if part is None:
        return None
    events, delayed = _dsn_events(part)
    addresses, message_id = _clues(msg)
    if not events:
        verdict = Verdict.DELAY if delayed else Verdict.UNRECOGNISED
        return Report(
            verdict=verdict,
            envelope_addresses=addresses,
            original_message_id=message_id,
            subject=_subject(msg),
            detector="dsn",
        )
    return Report(
        verdict=Verdict.BOUNCE,
        events=tuple(events),
        envelope_addresses=addresses,
        original_message_id=message_id,
        subject=_subject(msg),
        detector="dsn",
    )


# --- RFC 5965 feedback reports (complaints) -----------------------------------


def _arf_parse(msg: Message) -> Report | None:
    part = _report_part(msg, "message/feedback-report")
    if part is None:
        return None
    blocks = _status_blocks(part)
    fields = blocks[0] if blocks else Message()
    feedback_type = _unfold(fields.get("Feedback-Type")).lower() or "abuse"
    addresses, message_id = _clues(msg)
    original = _returned_headers(msg)
    recipients = [_address(v) for v in fields.get_all("Original-Rcpt-To") or []]
    if not any(recipients) and original is not None:
        recipients = _header_addresses(original, ("To",))
    events = tuple(
        Event(
            recipient=r,
            kind=Kind.COMPLAINT,
            action="complaint",
            diagnostic=f"Feedback-Type: {feedback_type}; "
            f"User-Agent: {_unfold(fields.get('User-Agent'))}",
        )
        for r in recipients
        if r
    ) or (Event(recipient="", kind=Kind.COMPLAINT, action="complaint"),)
    return Report(
        verdict=Verdict.COMPLAINT,
        events=events,
        envelope_addresses=addresses,
        original_message_id=message_id,
        subject=_subject(msg),
        detector="arf",
    )


# --- auto-replies -------------------------------------------------------------

_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit"
    r"|absence|on vacation|away from (the )?office|r[ée]ponse automatique)",
    re.IGNORECASE,
)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.IGNORECASE)


def _is_from_daemon(msg: Message) -> bool:
    return bool(_DAEMON.search(_unfold(msg.get("From")))) or bool(msg.get("X-Failed-Recipients"))


def _is_auto_reply(msg: Message) -> bool:
    auto = _unfold(msg.get("Auto-Submitted")).lower()
    if auto.startswith("auto-replied") or auto.startswith("auto-generated"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Auto-Response-Suppress"):
        return True
    if _unfold(msg.get("Precedence")).lower() in ("auto_reply", "bulk", "junk", "list"):
        return True
    return bool(_AUTO_SUBJECT.search(_subject(msg)))


# --- non-standard bounces -----------------------------------------------------


def _body_text(msg: Message) -> str:
    """The human-readable text of a bounce, without the returned message."""
    texts: list[str] = []
    stack: list[Message] = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if ctype.startswith("message/") or ctype == "text/rfc822-headers":
            continue
        if part.is_multipart():
            stack = [*part.get_payload(), *stack]
            continue
        if part.get_content_maintype() == "text":
            raw = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(raw.decode(charset, "replace"))
            except LookupError:
                texts.append(raw.decode("utf-8", "replace"))
    text = "\n".join(texts)
    # Plain-text bounces append the original message after a marker line.
    marker = re.search(
        r"^\s*-+ ?(This is a copy of the message|Original message|Below this line is a copy"
        r"|The original message)|^--- Below this line",
        text,
        re.IGNORECASE | re.MULTILINE,
    )
    return text[: marker.start()] if marker else text


def _has_code(text: str) -> bool:
    return bool(_ENHANCED.search(text) or _BASIC.search(text))


def _diagnostic_for(recipient: str, text: str) -> str:
    """The lines of a plain-text bounce that say why the recipient failed:
    the first mention of it followed by a reply code, else the first line
    with a code, else the first mention."""
    lines = [line.strip() for line in text.splitlines()]
    blocks = [
        " ".join(ln for ln in lines[i : i + 5] if ln)
        for i, line in enumerate(lines)
        if recipient and recipient in line.lower()
    ]
    for block in blocks:
        if _has_code(block):
            return block[:1000]
    coded = [ln for ln in lines if _has_code(ln)]
    return (coded or blocks or [""])[0][:1000]


def _flufl_parse(msg: Message) -> Report | None:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - some detectors crash on odd messages (no From:)
        return None
    if not temporary and not permanent:
        return None
    text = _body_text(msg)
    events = []
    found = [(r, True) for r in sorted(permanent)] + [
        (r, False) for r in sorted(temporary - permanent)
    ]
    for raw_recipient, is_permanent in found:
        recipient = raw_recipient.decode("utf-8", "replace").strip().lower()
        diagnostic = _diagnostic_for(recipient, text)
        status = status_find(diagnostic)
        kind = classify(status, diagnostic)
        if kind is Kind.UNKNOWN:
            kind = Kind.HARD if is_permanent else Kind.SOFT
        events.append(Event(recipient=recipient, kind=kind, status=status, diagnostic=diagnostic))
    addresses, message_id = _clues(msg)
    if not message_id:
        id_match = re.search(r"^Message-ID:\s*<([^<>\s]+)>", _plain(msg), re.I | re.M)
        message_id = id_match.group(1) if id_match else ""
    return Report(
        verdict=Verdict.BOUNCE,
        events=tuple(events),
        envelope_addresses=addresses,
        original_message_id=message_id,
        subject=_subject(msg),
        detector="flufl",
    )


def _plain(msg: Message) -> str:
    """All text of the message, the returned copy included (where a
    plain-text bounce quotes the Message-ID of what bounced)."""
    chunks = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            raw = part.get_payload(decode=True) or b""
            chunks.append(raw.decode("utf-8", "replace"))
    return "\n".join(chunks)


# --- entry point --------------------------------------------------------------


def message_parse(raw: bytes) -> Report:
    """Parse one message of the bounce mailbox; what it cannot place is
    UNRECOGNISED, for the caller to keep and report."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    requested = [
        a for a in _header_addresses(msg, _ENVELOPE_HEADERS) if a.startswith(UNSUBSCRIBE_PREFIX)
    ]
    if requested:
        # Whether the token is genuine is the caller's to check (it signs them).
        return Report(
            verdict=Verdict.UNSUBSCRIBE,
            envelope_addresses=tuple(requested),
            subject=_subject(msg),
            detector="list-unsubscribe",
        )
    if msg.get_content_type() == "multipart/report" or _report_part(msg, "message/delivery-status"):
        report = _dsn_parse(msg) or _arf_parse(msg)
        if report is not None:
            return report
    report = _arf_parse(msg)
    if report is not None:
        return report
    # An out-of-office reply is no bounce, but some detectors' patterns
    # ("could not be delivered", "unknown user") appear in replies too, so
    # a reply that does not come from a mail system is never scanned.
    if _is_auto_reply(msg) and not _is_from_daemon(msg):
        return Report(verdict=Verdict.AUTO_REPLY, subject=_subject(msg), detector="auto-reply")
    report = _flufl_parse(msg)
    if report is not None:
        return report
    addresses, message_id = _clues(msg)
    return Report(
        verdict=Verdict.UNRECOGNISED,
        envelope_addresses=addresses,
        original_message_id=message_id,
        subject=_subject(msg),
    )
