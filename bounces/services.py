"""The process-bounce-email job: read each bounce mailbox, record what
came back, apply the bounce rules, delete what was recorded.

A message is deleted (or, for IMAP, moved) only after its record is
committed, and POP3 deletes only at QUIT, IMAP at EXPUNGE: a run that
dies half-way deletes nothing, and the next run recognises what was
already recorded by its POP3 UIDL or the digest of its bytes (a unique
constraint), records nothing twice and removes it then. What cannot be
read is kept in the mailbox and reported on the dashboard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from anymail.signals import AnymailTrackingEvent
from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns.messages import UNSUBSCRIBE_TAG, tagged_token, verp_token
from campaigns.models import CampaignItem, Contact, Suppression, TrackingEvent
from campaigns.selectors import campaigns_sent_through
from campaigns.services import contact_unsubscribe, suppression_add
from campaigns.tracking import item_record_delivery, tracking_record_provider_event
from jobs.locks import BOUNCE_MAILBOXES, advisory_lock
from jobs.services import notification_raise, notification_resolve
from smtpservers.encryption import reveal
from smtpservers.oauth import OAuthError, oauth_token_refresh

from .mailbox import SESSION_ERRORS, AccessToken, MailboxError, describe, session_open
from .models import Bounce, BounceMailbox, BounceRule, Kind
from .parsing import Event, Report, Verdict, message_parse
from .parsing import Kind as EventKind

logger = logging.getLogger(__name__)

# Messages read from one mailbox per run; the rest wait for the next run,
# so one flooded mailbox cannot hold the job for hours.
MAX_MESSAGES_PER_RUN = 500
# The job runs every minute, a little late or early; without slack a
# mailbox read every minute would be read only every other run.
POLL_SLACK = timedelta(seconds=5)


@dataclass(frozen=True)
class ConnectionReport:
    ok: bool
    message: str


def access_token(mailbox: BounceMailbox) -> str:
    """The mailbox's OAuth 2.0 access token, refreshed first when it is
    about to expire (the token handling of the SMTP servers)."""
    try:
        oauth_token_refresh(server=mailbox)
    except OAuthError as exc:
        raise MailboxError(f"The OAuth 2.0 access token could not be refreshed: {exc}") from exc
    token = reveal(mailbox.oauth_access_token)
    if not token:
        raise MailboxError(
            "No OAuth 2.0 token yet: click “Generate tokens” on the mailbox and sign in."
        )
    return token


def _login(mailbox: BounceMailbox) -> AccessToken | None:
    return access_token if mailbox.uses_oauth2 else None


def connection_test(*, mailbox: BounceMailbox) -> ConnectionReport:
    """Log in and count the waiting messages; deletes nothing."""
    try:
        with session_open(mailbox, access_token=_login(mailbox), readonly=True) as session:
            summary = session.summary()
        report = ConnectionReport(True, f"Connected and logged in; {summary}.")
    except MailboxError as exc:
        report = ConnectionReport(False, str(exc))
    except SESSION_ERRORS as exc:
        report = ConnectionReport(False, describe(exc, mailbox))
    _status_save(mailbox, report.message)
    return report


def _status_save(mailbox: BounceMailbox, status: str) -> None:
    BounceMailbox.objects.filter(pk=mailbox.pk).update(
        last_checked_at=timezone.now(), last_status=status[:500]
    )


# --- the job ------------------------------------------------------------------


def mailboxes_due(*, now: datetime | None = None) -> list[BounceMailbox]:
    """Active mailboxes whose poll interval has passed since their last read."""
    now = now or timezone.now()
    return [
        mailbox
        for mailbox in BounceMailbox.objects.filter(is_active=True)
        if mailbox.last_polled_at is None
        or now - mailbox.last_polled_at >= timedelta(minutes=mailbox.poll_interval) - POLL_SLACK
    ]


def bounces_process() -> int:
    """Read every active mailbox that is due; returns how many messages
    were recorded. A mailbox that cannot be read does not stop the others;
    the run fails at the end, naming them."""
    recorded = 0
    failures = []
    for mailbox in mailboxes_due():
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


def mailbox_process(*, mailbox: BounceMailbox) -> int:
    with advisory_lock(space=BOUNCE_MAILBOXES, key=mailbox.pk) as got:
        if not got:
            return 0  # another run is reading this mailbox right now
        # Stamped before reading: a mailbox that fails waits its interval too.
        BounceMailbox.objects.filter(pk=mailbox.pk).update(last_polled_at=timezone.now())
        recorded, kept = _mailbox_read(mailbox)
        status = f"Read {recorded} message(s)" + (f", kept {len(kept)}." if kept else ".")
        _status_save(mailbox, status)
        _kept_report(mailbox, kept)
        notification_resolve(key=f"bounces:mailbox:{mailbox.pk}")
        return recorded


def _mailbox_read(mailbox: BounceMailbox) -> tuple[int, list[str]]:
    """Record and remove each message; returns how many were recorded and
    why the others were kept."""
    recorded, kept = 0, []
    with session_open(mailbox, access_token=_login(mailbox)) as session:
        for listed in session.listing()[:MAX_MESSAGES_PER_RUN]:
            raw = None if listed.uid else session.fetch(listed.ref)
            if raw is None and listed.uid is None:
                continue  # removed by someone else since the listing
            # Without a server id (IMAP, POP3 without UIDL), the digest of the
            # bytes: the same message read again, or moved back, is known.
            uid = listed.uid or "sha256:" + hashlib.sha256(raw or b"").hexdigest()
            if Bounce.objects.filter(mailbox=mailbox, message_uid=uid).exists():
                session.remove(listed.ref)  # recorded by a run that died before removing it
                continue
            raw = raw or session.fetch(listed.ref)
            if raw is None:
                continue
            problem = _message_handle(mailbox=mailbox, uid=uid, raw=raw)
            if problem:
                kept.append(f"message {uid}: {problem}")
                continue
            session.remove(listed.ref)
            recorded += 1
    return recorded, kept


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
                if item.contact.status != Contact.Status.COMPLAINED:  # forward only
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
    reason = f"{bounce.get_kind_display()} {bounce.status_code} {bounce.diagnostic}".strip()
    suppression_add(
        pattern=contact.email,
        source=Suppression.Source.COMPLAINT if complaint else Suppression.Source.BOUNCE,
        reason=reason,
    )
    if complaint:
        # A complaint outranks a bounce, whichever came first.
        Suppression.objects.filter(
            pattern=contact.email.strip().lower(), source=Suppression.Source.BOUNCE
        ).update(source=Suppression.Source.COMPLAINT, reason=reason[:255])
    contacts = Contact.objects.filter(pk=contact.pk)
    if rule.action == BounceRule.Action.SUPPRESS_UNSUBSCRIBE:
        status = Contact.Status.COMPLAINED if complaint else Contact.Status.UNSUBSCRIBED
        contacts.exclude(status=Contact.Status.COMPLAINED).update(status=status)
        return "suppressed and unsubscribed"
    status = Contact.Status.COMPLAINED if complaint else Contact.Status.BOUNCED
    contacts.filter(status=Contact.Status.ACTIVE).update(status=status)
    return "suppressed"


# --- provider webhooks --------------------------------------------------------

# anymail's normalised event types that change something; deliveries,
# opens, clicks and deferrals (the provider retries) are answered and not
# recorded.
_ESP_UNSUBSCRIBE_REASONS = ("unsubscribed",)
_ESP_RECORDED = ("bounced", "rejected", "complained", "unsubscribed")
# What the provider saw of a delivered message: recorded on the item (and
# its campaign's counters), never as a bounce.
_ESP_ENGAGEMENT = ("delivered", "opened", "clicked")


def _esp_kind(event: AnymailTrackingEvent) -> str:
    raw = event.esp_event if isinstance(event.esp_event, dict) else {}
    if event.event_type == "complained" or event.reject_reason == "spam":
        return Kind.COMPLAINT
    if event.event_type == "unsubscribed" or event.reject_reason in _ESP_UNSUBSCRIBE_REASONS:
        return Kind.UNSUBSCRIBE
    return Kind.SOFT if _esp_soft(event.reject_reason, raw) else Kind.HARD


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


# SparkPost's bounce classes for temporary failures (DNS, mailbox full, too
# large, timeout, transient).
_SPARKPOST_SOFT = {"20", "21", "22", "23", "24", "70"}


def _esp_soft(reject_reason: str | None, raw: dict) -> bool:
    """A temporary failure reported as a bounce, in each provider's words."""
    data = _dict(raw.get("data"))
    sparkpost = _dict(_dict(raw.get("msys")).get("message_event"))
    return (
        reject_reason == "timed_out"
        or raw.get("Type") == "SoftBounce"  # Postmark
        or raw.get("event") == "soft_bounce"  # Brevo, Mandrill
        or raw.get("type") == "blocked"  # SendGrid
        or raw.get("hard_bounce") is False  # Mailjet
        or _dict(raw.get("bounce")).get("bounceType") == "Transient"  # Amazon SES
        or _dict(data.get("bounce")).get("type") == "Transient"  # Resend
        or data.get("type") == "soft_bounced"  # MailerSend
        or str(sparkpost.get("bounce_class")) in _SPARKPOST_SOFT
    )


def _esp_event_type(provider: str, event: AnymailTrackingEvent) -> str:
    # Postal reports the receiving server's permanent refusal as a failed
    # delivery (HardFail), which anymail keeps apart from bounces.
    if provider == "postal" and event.event_type == "failed":
        return "bounced"
    return str(event.event_type)


def _esp_event_id(provider: str, event: AnymailTrackingEvent) -> str:
    """The provider's id of the event. Mailgun's event id is unique per day,
    so with its timestamp; without an id (Postmark deliveries), a digest
    of the event as the provider sent it."""
    raw = event.esp_event if isinstance(event.esp_event, dict) else {}
    data = raw.get("event-data") or {}
    if provider == "mailgun" and data.get("id"):
        return f"{data['id']}@{data.get('timestamp', '')}"[:255]
    if event.event_id:
        return str(event.event_id)[:255]
    canonical = json.dumps(raw, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# The dispatcher whose webhook URL an event came in on (bounces/webhooks.py
# sets it around anymail's view, whose signal carries no such thing): only
# the items it sent can be the event's. None on the older URLs that name
# no dispatcher.
receiving_dispatcher: ContextVar[int | None] = ContextVar("receiving_dispatcher", default=None)


def _esp_match(event: AnymailTrackingEvent) -> Match:
    """The item an event is about: Herald's Message-ID (<token@...>), then
    the provider's message id recorded at send, then the address. Of the
    items the receiving dispatcher sent (its campaigns' and its pools'): a
    provider account another dispatcher shares cannot move their items."""
    items = CampaignItem.objects.select_related("contact")
    if (dispatcher_id := receiving_dispatcher.get()) is not None:
        items = items.filter(campaign__in=campaigns_sent_through(dispatcher_id=dispatcher_id))
    message_id = str(event.message_id or "").strip()  # Postal and Mailjet: numbers
    local = message_id.strip("<>").partition("@")[0].lower()
    if _TOKEN.match(local) and (item := items.filter(token=local).first()):
        return Match(item, item.contact, "message-id")
    if message_id:
        ids = {message_id, message_id.strip("<>")}
        if item := items.filter(queue_id__in=ids).first():
            return Match(item, item.contact, "esp-id")
    recipient = (event.recipient or "").lower()
    if recipient and (contact := Contact.objects.filter(email__iexact=recipient).first()):
        return Match(None, contact, "address")
    return Match(None, None, "")


def _esp_engagement(provider: str, event: AnymailTrackingEvent) -> None:
    item = _esp_match(event).item
    if item is None:
        return  # not one of Herald's messages: answered 200, nothing changes
    if event.event_type == "delivered":
        item_record_delivery(item=item)
        return
    kind = TrackingEvent.Kind.OPEN if event.event_type == "opened" else TrackingEvent.Kind.CLICK
    tracking_record_provider_event(
        item=item,
        kind=kind,
        event_id=_esp_event_id(provider, event),
        url=event.click_url or "",
        user_agent=event.user_agent or "",
    )


def esp_event_record(*, provider: str, event: AnymailTrackingEvent) -> Bounce | None:
    """Record one verified provider event and apply the rules, once: a
    replayed or retried event (same provider id) changes nothing, and
    events applied in any order leave the same state (statuses only move
    forward, see bounce_apply)."""
    if event.event_type in _ESP_ENGAGEMENT:
        _esp_engagement(provider, event)
        return None
    event_type = _esp_event_type(provider, event)
    if event_type not in _ESP_RECORDED:
        return None
    kind = _esp_kind(event)
    match = _esp_match(event)
    try:
        with transaction.atomic():
            bounce = Bounce.objects.create(
                provider=provider,
                message_uid=_esp_event_id(provider, event),
                kind=kind,
                recipient=(event.recipient or "")[:254],
                status_code=_status_code(event.mta_response or ""),
                action=event_type[:16],
                diagnostic="\n".join(
                    part for part in (event.description, event.mta_response) if part
                ),
                matched_by=match.by,
                item=match.item,
                campaign_id=match.item.campaign_id if match.item else None,
                contact=match.contact,
            )
            if kind == Kind.UNSUBSCRIBE:
                bounce.outcome = _esp_unsubscribe(bounce)
            else:
                bounce.outcome = bounce_apply(bounce=bounce)
            bounce.save(update_fields=["outcome"])
    except IntegrityError:
        return None  # already recorded: a replay or the provider's retry
    return bounce


_STATUS_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _status_code(text: str) -> str:
    found = _STATUS_CODE.search(text)
    return found.group(1) if found else ""


def _esp_unsubscribe(bounce: Bounce) -> str:
    if bounce.contact is None:
        return "no contact matched"
    # Forward only: a complained contact stays complained.
    Contact.objects.filter(
        pk=bounce.contact_id, status__in=(Contact.Status.ACTIVE, Contact.Status.BOUNCED)
    ).update(status=Contact.Status.UNSUBSCRIBED)
    return "unsubscribed"
