"""The process-bounce-email job: read each bounce mailbox, record what
came back, apply the bounce rules, delete what was recorded.

A message is deleted only after its record is committed, and POP3
deletes only at QUIT: a run that dies half-way deletes nothing, and the
next run recognises what was already recorded by its UIDL (a unique
constraint), records nothing twice and deletes it then. What cannot be
read is kept in the mailbox and reported on the dashboard.
"""

from __future__ import annotations

import hashlib
import logging
import poplib
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns.messages import UNSUBSCRIBE_TAG, tagged_token, verp_token
from campaigns.models import CampaignItem, Contact, Suppression
from campaigns.services import contact_unsubscribe, suppression_add
from jobs.locks import BOUNCE_MAILBOXES, advisory_lock
from jobs.services import notification_raise, notification_resolve
from smtpservers.encryption import Secret

from .models import Bounce, BounceMailbox, BounceRule, Kind
from .parsing import Event, Report, Verdict, message_parse
from .parsing import Kind as EventKind

logger = logging.getLogger(__name__)

# Messages read from one mailbox per run; the rest wait for the next run,
# so one flooded mailbox cannot hold the job for hours.
MAX_MESSAGES_PER_RUN = 500


class MailboxError(Exception):
    """The mailbox could not be read; the message says why, for people."""


# --- connecting ---------------------------------------------------------------


def _tls_context(mailbox: BounceMailbox) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not mailbox.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _password(mailbox: BounceMailbox) -> str:
    value = mailbox.password
    return value.reveal() if isinstance(value, Secret) else str(value or "")


def _describe(exc: BaseException, mailbox: BounceMailbox) -> str:
    where = f"{mailbox.host}:{mailbox.port}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"No answer from {where} within {mailbox.timeout} s."
    if isinstance(exc, ConnectionRefusedError):
        return f"Connection refused by {where}: is the port right and the server running?"
    if isinstance(exc, socket.gaierror):
        return f"Host {mailbox.host} not found."
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"The server's certificate is not trusted: {exc.verify_message}."
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where}: {exc.reason or exc}."
    if isinstance(exc, poplib.error_proto):
        reply = exc.args[0] if exc.args else b""
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return f"The server refused: {text}"
    if isinstance(exc, OSError):
        return f"Cannot connect to {where}: {exc.strerror or exc}."
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _pop3(mailbox: BounceMailbox) -> Iterator[poplib.POP3]:
    """A logged-in POP3 session. Leaving the block normally sends QUIT
    (which commits deletions); an exception closes the socket without
    QUIT, so the server deletes nothing."""
    try:
        if mailbox.security == BounceMailbox.Security.SSL:
            client: poplib.POP3 = poplib.POP3_SSL(
                mailbox.host, mailbox.port, timeout=mailbox.timeout, context=_tls_context(mailbox)
            )
        else:
            client = poplib.POP3(mailbox.host, mailbox.port, timeout=mailbox.timeout)
        if mailbox.security == BounceMailbox.Security.STARTTLS:
            client.stls(context=_tls_context(mailbox))
        client.user(mailbox.username)
        client.pass_(_password(mailbox))
    except (OSError, poplib.error_proto) as exc:
        raise MailboxError(_describe(exc, mailbox)) from exc
    try:
        yield client
    except BaseException:
        client.close()
        raise
    try:
        client.quit()
    except (OSError, poplib.error_proto) as exc:
        raise MailboxError(f"QUIT failed, nothing was deleted: {_describe(exc, mailbox)}") from exc


@dataclass(frozen=True)
class ConnectionReport:
    ok: bool
    message: str


def connection_test(*, mailbox: BounceMailbox) -> ConnectionReport:
    """Log in and count the waiting messages; deletes nothing."""
    try:
        with _pop3(mailbox) as client:
            count, size = client.stat()
        report = ConnectionReport(
            True, f"Connected and logged in; {count} message(s) waiting ({size} bytes)."
        )
    except MailboxError as exc:
        report = ConnectionReport(False, str(exc))
    except (OSError, poplib.error_proto) as exc:
        report = ConnectionReport(False, _describe(exc, mailbox))
    _status_save(mailbox, report.message)
    return report


def _status_save(mailbox: BounceMailbox, status: str) -> None:
    BounceMailbox.objects.filter(pk=mailbox.pk).update(
        last_checked_at=timezone.now(), last_status=status[:500]
    )


# --- the job ------------------------------------------------------------------


def bounces_process() -> int:
    """Read every active mailbox; returns how many messages were recorded.
    A mailbox that cannot be read does not stop the others; the run fails
    at the end, naming them."""
    recorded = 0
    failures = []
    for mailbox in BounceMailbox.objects.filter(is_active=True):
        try:
            recorded += mailbox_process(mailbox=mailbox)
        except MailboxError as exc:
            failures.append(f"{mailbox.name}: {exc}")
            _status_save(mailbox, f"Failed: {exc}")
            notification_raise(
                key=f"bounces:mailbox:{mailbox.pk}",
                title=f"Bounce mailbox “{mailbox.name}” cannot be read",
                message=str(exc),
                level="error",
            )
    if failures:
        raise MailboxError("; ".join(failures))
    return recorded


def _listing(client: poplib.POP3) -> list[tuple[int, str | None]]:
    """(message number, UIDL) of each waiting message; UIDL is optional in
    RFC 1939, so without it the id is a digest of the message."""
    try:
        _, lines, _ = client.uidl()
    except poplib.error_proto:
        _, lines, _ = client.list()
        return [(int(line.split()[0]), None) for line in lines]
    listing = []
    for line in lines:
        number, _, uid = line.decode("ascii", "replace").partition(" ")
        listing.append((int(number), uid.strip()[:255]))
    return listing


def mailbox_process(*, mailbox: BounceMailbox) -> int:
    with advisory_lock(space=BOUNCE_MAILBOXES, key=mailbox.pk) as got:
        if not got:
            return 0  # another run is reading this mailbox right now
        try:
            recorded, kept = _mailbox_read(mailbox)
        except (OSError, poplib.error_proto) as exc:  # the session broke mid-way
            raise MailboxError(_describe(exc, mailbox)) from exc
        status = f"Read {recorded} message(s)" + (f", kept {len(kept)}." if kept else ".")
        _status_save(mailbox, status)
        _kept_report(mailbox, kept)
        notification_resolve(key=f"bounces:mailbox:{mailbox.pk}")
        return recorded


def _mailbox_read(mailbox: BounceMailbox) -> tuple[int, list[str]]:
    """Record and delete each message; returns how many were recorded and
    why the others were kept."""
    recorded, kept = 0, []
    with _pop3(mailbox) as client:
        for number, listed_uid in _listing(client)[:MAX_MESSAGES_PER_RUN]:
            raw = None if listed_uid else _retrieve(client, number)
            uid = listed_uid or "sha256:" + hashlib.sha256(raw or b"").hexdigest()
            if Bounce.objects.filter(mailbox=mailbox, message_uid=uid).exists():
                client.dele(number)  # recorded by an earlier run that died before QUIT
                continue
            raw = raw or _retrieve(client, number)
            problem = _message_handle(mailbox=mailbox, uid=uid, raw=raw)
            if problem:
                kept.append(f"message {uid}: {problem}")
                continue
            client.dele(number)
            recorded += 1
    return recorded, kept


def _retrieve(client: poplib.POP3, number: int) -> bytes:
    # poplib has already undone the dot-stuffing of each line.
    return b"\r\n".join(client.retr(number)[1]) + b"\r\n"


def _kept_report(mailbox: BounceMailbox, kept: list[str]) -> None:
    key = f"bounces:mailbox:{mailbox.pk}:unread"
    if not kept:
        notification_resolve(key=key)
        return
    notification_raise(
        key=key,
        title=f"{len(kept)} message(s) in bounce mailbox “{mailbox.name}” were not understood",
        message="They are kept in the mailbox; look at them and delete them by hand.\n"
        + "\n".join(kept[:20]),
    )


def _message_handle(*, mailbox: BounceMailbox, uid: str, raw: bytes) -> str:
    """Record one message; returns why it was kept, or "" if recorded."""
    try:
        report = message_parse(raw)
    except Exception as exc:  # noqa: BLE001 - any parser crash keeps the message
        logger.exception("bounce message %s of %s could not be parsed", uid, mailbox)
        return f"cannot be parsed ({type(exc).__name__}: {exc})"
    if report.verdict is Verdict.UNRECOGNISED:
        return f"not a bounce, complaint or auto-reply (subject: {report.subject!r})"
    if report.verdict is Verdict.UNSUBSCRIBE:
        return unsubscribe_record(mailbox=mailbox, uid=uid, report=report)
    bounce_record(mailbox=mailbox, uid=uid, report=report)
    return ""


def unsubscribe_record(*, mailbox: BounceMailbox | None, uid: str, report: Report) -> str:
    """Honour a mail to a List-Unsubscribe mailto: address. Only a genuine
    (signed) address unsubscribes; a forged one is kept and reported."""
    for address in report.envelope_addresses:
        token = tagged_token(tag=UNSUBSCRIBE_TAG, address=address)
        item = CampaignItem.objects.select_related("contact").filter(token=token).first()
        if token is None or item is None:
            continue
        try:
            with transaction.atomic():
                Bounce.objects.create(
                    mailbox=mailbox,
                    message_uid=uid,
                    kind=Kind.UNSUBSCRIBE,
                    recipient=item.contact.email,
                    subject=report.subject,
                    matched_by="mailto",
                    item=item,
                    campaign_id=item.campaign_id,
                    contact=item.contact,
                    outcome="unsubscribed",
                )
                contact_unsubscribe(token=token, source="mailto")
        except IntegrityError:
            pass  # recorded by an earlier or concurrent run: just delete it
        return ""
    return "an unsubscribe request whose address is not one Herald signed"


# --- recording and rules ------------------------------------------------------


@dataclass(frozen=True)
class Match:
    item: CampaignItem | None
    contact: Contact | None
    by: str


_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def bounce_match(*, report: Report, event: Event) -> Match:
    """The item and contact an event is about: the VERP return path, then
    the Message-ID of the bounced message, then the recipient address."""
    items = CampaignItem.objects.select_related("contact")
    for address in report.envelope_addresses:
        token = verp_token(address)
        if token and (item := items.filter(token=token).first()):
            return Match(item, item.contact, "verp")
    local = report.original_message_id.partition("@")[0].lower()
    if _TOKEN.match(local) and (item := items.filter(token=local).first()):
        return Match(item, item.contact, "message-id")
    if event.recipient and (contact := Contact.objects.filter(email=event.recipient).first()):
        return Match(None, contact, "address")
    return Match(None, None, "")


def bounce_record(*, mailbox: BounceMailbox | None, uid: str, report: Report) -> list[Bounce]:
    """Store the events of one message and apply the rules, in one
    transaction; a message already recorded records nothing."""
    # One row per recipient: a report naming one twice records it once.
    unique: dict[str, Event] = {}
    for event in report.events:
        unique.setdefault(event.recipient, event)
    events = list(unique.values()) or [Event(recipient="", kind=EventKind.UNKNOWN)]
    ignored = report.verdict in (Verdict.AUTO_REPLY, Verdict.DELAY)
    bounces = []
    try:
        with transaction.atomic():
            for event in events:
                match = bounce_match(report=report, event=event)
                bounce = Bounce.objects.create(
                    mailbox=mailbox,
                    message_uid=uid,
                    kind=Kind.IGNORED if ignored else event.kind,
                    recipient=event.recipient[:254],
                    status_code=event.status[:16],
                    action=event.action[:16],
                    diagnostic=event.diagnostic,
                    subject=report.subject,
                    matched_by=match.by,
                    item=match.item,
                    campaign_id=match.item.campaign_id if match.item else None,
                    contact=match.contact,
                )
                if not ignored:
                    bounce.outcome = bounce_apply(bounce=bounce)
                    bounce.save(update_fields=["outcome"])
                bounces.append(bounce)
    except IntegrityError:
        return []  # a concurrent run recorded it first
    return bounces


_SUPPRESSING = (BounceRule.Action.SUPPRESS, BounceRule.Action.SUPPRESS_UNSUBSCRIBE)


def bounce_apply(*, bounce: Bounce) -> str:
    """Mark the item bounced and apply the kind's rule to the contact;
    returns what was done, for the record."""
    if bounce.item_id and bounce.kind != Kind.COMPLAINT:
        CampaignItem.objects.filter(pk=bounce.item_id, status=CampaignItem.Status.SENT).update(
            status=CampaignItem.Status.BOUNCED
        )
    contact = bounce.contact
    if contact is None:
        return "no contact matched"
    rule = BounceRule.objects.filter(kind=bounce.kind).first()
    if rule is None or rule.action not in _SUPPRESSING:
        return "recorded"
    since = timezone.now() - timedelta(days=rule.period_days)
    seen = Bounce.objects.filter(contact=contact, kind=bounce.kind, created_at__gte=since).count()
    if seen < rule.count:
        return f"{seen} of {rule.count} within {rule.period_days} days"
    complaint = bounce.kind == Kind.COMPLAINT
    suppression_add(
        pattern=contact.email,
        source=Suppression.Source.COMPLAINT if complaint else Suppression.Source.BOUNCE,
        reason=f"{bounce.get_kind_display()} {bounce.status_code} {bounce.diagnostic}".strip(),
    )
    contacts = Contact.objects.filter(pk=contact.pk)
    if rule.action == BounceRule.Action.SUPPRESS_UNSUBSCRIBE:
        status = Contact.Status.COMPLAINED if complaint else Contact.Status.UNSUBSCRIBED
        contacts.exclude(status=Contact.Status.COMPLAINED).update(status=status)
        return "suppressed and unsubscribed"
    status = Contact.Status.COMPLAINED if complaint else Contact.Status.BOUNCED
    contacts.filter(status=Contact.Status.ACTIVE).update(status=status)
    return "suppressed"
