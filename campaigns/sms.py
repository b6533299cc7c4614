"""SMS campaigns: phone numbers, segments, the SMS body, sending a batch
through Twilio, and Twilio's status callbacks.

An SMS batch is claimed like any other (services.batch_claim, the same
hourly limits); services.batch_send hands it here when its dispatcher is
an SMS dispatcher. Items move exactly as email items do, through
services.item_record_result: the item is "sent" once Twilio accepted the
message (its SID kept in queue_id), and Twilio's status callbacks then
say whether it was delivered or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from django.conf import settings
from django.db.models import Case, F, Value, When
from django.template import Context
from django.template import Template as DjangoTemplate
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from dispatchers.models import Dispatcher
from dispatchers.services import dispatcher_pause, pool_member_record_failover
from dispatchers.transports import ConnectionLost
from dispatchers.transports.twilio import TwilioTransport
from jobs.services import notification_raise
from smtpservers.encryption import reveal

from .messages import contact_values, unsubscribe_url
from .models import Batch, Campaign, CampaignItem, Contact, Suppression, Template
from .sandbox import TEXT_ENGINE, Fields
from .services import (
    BatchRun,
    batch_sending_campaigns,
    item_record_result,
    suppression_add,
)

S = CampaignItem.Status

# Twilio refuses a body longer than this (error 21617).
MAX_BODY_CHARS = 1600
# Twilio's error for a recipient who replied STOP to the sender.
UNSUBSCRIBED_RECIPIENT = 21610

# --- phone numbers -----------------------------------------------------------


class InvalidPhone(ValueError):
    """A phone number Twilio could not send to; the message says why."""


_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "no valid country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}

_LENGTH_REASONS = {
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
}


def phone_normalise(raw: str, *, region: str | None = None) -> str:
    """The number in E.164 (+441632960961), or InvalidPhone with the reason.

    A number written without +country code is read as one of ``region``
    (default HERALD_SMS_DEFAULT_REGION); with no region it is refused,
    since guessing a country sends to the wrong person."""
    region = (settings.HERALD_SMS_DEFAULT_REGION if region is None else region) or None
    shown = raw.strip()
    if not shown:
        raise InvalidPhone("No phone number.")
    try:
        number = phonenumbers.parse(shown, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        if exc.error_type == exc.INVALID_COUNTRY_CODE and not shown.startswith("+"):
            reason = "no country code: write it as +<country code><number>" + (
                "" if region else " (no default region is set)"
            )
        raise InvalidPhone(f"Invalid phone number {shown!r}: {reason}.") from exc
    if not phonenumbers.is_valid_number(number):
        length = _LENGTH_REASONS.get(phonenumbers.is_possible_number_with_reason(number))
        where = phonenumbers.region_code_for_country_code(number.country_code)
        reason = length or f"not a valid number for {where} (+{number.country_code})"
        raise InvalidPhone(f"Invalid phone number {shown!r}: {reason}.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- segments ----------------------------------------------------------------

# GSM 03.38: the default alphabet (one septet each) and its extension
# table (an escape plus a septet: two each).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7, UCS2 = "GSM-7", "UCS-2"


def sms_segments(text: str) -> tuple[str, int]:
    """(encoding, segments) of an SMS body, as carriers (and Twilio's bill)
    count them: GSM-7 160 septets alone or 153 per part, UCS-2 70 code
    units alone or 67 per part. An escaped character or a surrogate pair
    is never split between parts, so it may start the next one early."""
    if not text:
        return GSM7, 0
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        sizes = [2 if c in GSM7_EXTENSION else 1 for c in text]
        return GSM7, _parts(sizes, single=160, part=153)
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return UCS2, _parts(sizes, single=70, part=67)


def _parts(sizes: list[int], *, single: int, part: int) -> int:
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > part:
            parts, used = parts + 1, 0
        used += size
    return parts


# --- the body ----------------------------------------------------------------


class SmsBuildError(Exception):
    """The template cannot make an SMS for this contact."""


def sms_compile(*, template: Template) -> DjangoTemplate | None:
    """The SMS body parsed once per batch; None when the template has none."""
    if not template.sms_body.strip():
        return None
    return TEXT_ENGINE.from_string(template.sms_body)


def sms_render(
    *, compiled: DjangoTemplate | None, contact: Contact, campaign: Campaign, token: str
) -> str:
    if compiled is None:
        raise SmsBuildError("The template has no SMS body.")
    # Plain data only, as for email (see sandbox.py); SMS is plain text.
    values = {
        "contact": Fields({**contact_values(contact), "phone": contact.phone}),
        "campaign": Fields({"name": campaign.name}),
        "unsubscribe_url": unsubscribe_url(token=token),
    }
    body = compiled.render(Context(values, autoescape=False)).strip()
    if not body:
        raise SmsBuildError("The SMS body is empty for this contact.")
    if len(body) > MAX_BODY_CHARS:
        raise SmsBuildError(
            f"The SMS body is {len(body)} characters; Twilio takes at most {MAX_BODY_CHARS}."
        )
    return body


@dataclass(frozen=True)
class SmsPreview:
    text: str
    encoding: str
    segments: int
    error: str = ""  # why this contact gets no SMS (an empty body, say)

    @property
    def characters(self) -> int:
        return len(self.text)


def sms_preview(*, template: Template, contact: Contact) -> SmsPreview:
    """The SMS as a batch would render it for this contact, with what it
    costs in segments. Nothing is stored."""
    campaign = Campaign(name=template.name, template=template)
    text = sms_render(
        compiled=sms_compile(template=template), contact=contact, campaign=campaign, token="preview"
    )
    encoding, segments = sms_segments(text)
    return SmsPreview(text=text, encoding=encoding, segments=segments)


# --- sending a batch ---------------------------------------------------------


def status_callback_url(*, dispatcher_id: int) -> str:
    """Where Twilio reports each message's fate. It names the dispatcher,
    so the callback is checked against that dispatcher's auth token."""
    return settings.HERALD_PUBLIC_URL + reverse("campaigns:twilio_status", args=[dispatcher_id])


def twilio_transport_for(dispatcher: Dispatcher) -> TwilioTransport:
    return TwilioTransport(
        account_sid=dispatcher.twilio_account_sid,
        auth_token=reveal(dispatcher.twilio_auth_token),
        from_number=dispatcher.sms_from_number,
        messaging_service_sid=dispatcher.twilio_messaging_service_sid,
    )


class SmsBatchRun(BatchRun):
    """One pass over an SMS batch: check, render and send each item in
    turn over one Twilio session, recording each result as it comes."""

    # How often pauses and new suppressions are re-read within a batch.
    REFRESH_EVERY = 200

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch)
        self.callback = status_callback_url(dispatcher_id=self.dispatcher.pk)
        self.compiled: dict[int, DjangoTemplate | None] = {}
        self.sending: set[int] = set()
        self.suppressed: set[str] = set()

    def items(self) -> Iterator[CampaignItem]:
        return (
            CampaignItem.objects.filter(batch=self.batch, status=S.CLAIMED)
            .select_related("contact", "campaign__template")
            .order_by("id")
            .iterator(chunk_size=500)
        )

    def send_all(self) -> None:
        self._flag_in_doubt()
        transport = twilio_transport_for(self.dispatcher)
        try:
            transport.open()
        except ConnectionLost as exc:
            self.lost = exc
            return
        try:
            for count, item in enumerate(self.items()):
                if count % self.REFRESH_EVERY == 0:
                    self.sending = batch_sending_campaigns(self.batch)
                    self.suppressed = _batch_suppressed(self.batch)
                self._send(transport, item)
                if self.lost is not None:
                    break
        finally:
            transport.close()

    def _send(self, transport: TwilioTransport, item: CampaignItem) -> None:
        campaign, contact = item.campaign, item.contact
        if campaign.pk not in self.sending:
            return  # paused or cancelled meanwhile: released at the end
        try:
            phone, bad_phone = phone_normalise(contact.phone), ""
        except InvalidPhone as exc:
            phone, bad_phone = "", str(exc)
        reason = _skip_reason(contact, phone, self.suppressed)
        if not reason and not contact.phone.strip():
            reason = "no phone number"
        if reason:
            self._settle(item, status=S.SKIPPED, skip_reason=reason)
            return
        if bad_phone:
            self._settle(item, status=S.FAILED, smtp_response=bad_phone[:500])
            return
        if campaign.template_id not in self.compiled:
            self.compiled[campaign.template_id] = sms_compile(template=campaign.template)
        try:
            body = sms_render(
                compiled=self.compiled[campaign.template_id],
                contact=contact,
                campaign=campaign,
                token=item.token,
            )
        except SmsBuildError as exc:
            self._settle(item, status=S.FAILED, smtp_response=str(exc))
            return
        CampaignItem.objects.filter(pk=item.pk).update(sending_started_at=timezone.now())
        try:
            result = transport.send(to=phone, body=body, status_callback=self.callback)
        except ConnectionLost as exc:
            if not exc.maybe_delivered:
                CampaignItem.objects.filter(pk=item.pk).update(sending_started_at=None)
            self.lost = exc
            return
        status = item_record_result(item=item, result=result, now=timezone.now())
        if result.text.startswith(f"Twilio error {UNSUBSCRIBED_RECIPIENT}:"):
            # The recipient texted STOP to this sender: Twilio will refuse
            # every later message too, so no campaign should try again.
            suppression_add(
                pattern=phone, source=Suppression.Source.UNSUBSCRIBE, reason=result.text
            )
        if status == S.SENT:
            # Unless a callback got here first (it filters on rank, too).
            CampaignItem.objects.filter(pk=item.pk, provider_status="").update(
                provider_status=result.text[:12]
            )
        self.settled += 1
        self._count(campaign.pk, ok=status == S.SENT)

    def _settle(self, item: CampaignItem, *, status: str, **fields: str) -> None:
        """Skip or fail an item that was never handed to Twilio."""
        extra: dict[str, object] = {}
        if status == S.FAILED:
            extra["first_attempt_at"] = timezone.now()
        CampaignItem.objects.filter(pk=item.pk, status=S.CLAIMED, batch_id=item.batch_id).update(
            status=status, sending_started_at=None, **fields, **extra
        )
        self.settled += 1

    def _stop(self, error: str, now: datetime) -> None:
        _dispatcher_stop(self.dispatcher, error, now)


def _patterns(email: str, phone: str) -> list[str]:
    """What a suppression entry may name: the address, its domain, and (for
    SMS) the number in E.164."""
    email = email.lower()
    found = [email, "*@" + email.rpartition("@")[2]]
    return [*found, phone] if phone else found


def _batch_suppressed(batch: Batch) -> set[str]:
    """The suppression entries that hit the batch's unsent recipients, in
    one query (send-time check: generation's may be hours old)."""
    rows = CampaignItem.objects.filter(batch=batch, status=S.CLAIMED).values_list(
        "contact__email", "contact__phone"
    )
    patterns: set[str] = set()
    for email, raw in rows:
        try:
            phone = phone_normalise(raw) if raw else ""
        except InvalidPhone:
            phone = ""
        patterns.update(_patterns(email, phone))
    return set(Suppression.objects.filter(pattern__in=patterns).values_list("pattern", flat=True))


def _skip_reason(contact: Contact, phone: str, suppressed: set[str]) -> str:
    if contact.status != Contact.Status.ACTIVE:
        return contact.status
    if suppressed.intersection(_patterns(contact.email, phone)):
        return "suppressed"
    return ""


def _dispatcher_stop(dispatcher: Dispatcher, error: str, now: datetime) -> None:
    """Twilio refused the account or the sender: every message would fail
    the same way, so stop and say what to fix."""
    reason = f"Stopped: {error}"
    pool_member_record_failover(dispatcher=dispatcher, reason=reason, now=now)
    if dispatcher_pause(dispatcher=dispatcher, reason=reason):
        notification_raise(
            key=f"dispatcher:{dispatcher.pk}:paused",
            title=f"Dispatcher {dispatcher.name} stopped sending",
            message=f"{error} Check the dispatcher's Twilio account SID, auth token and from "
            "number or messaging service, then resume the dispatcher.",
            level="error",
        )


# --- status callbacks --------------------------------------------------------

# How far along a message is; a callback only ever moves an item forward
# (Twilio's callbacks may arrive out of order, or twice). The last rank is
# final: delivered, or failed for good.
STATUS_RANK: Mapping[str, int] = {
    "": 0,
    "accepted": 1,
    "scheduled": 1,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
}
_FAILED = ("undelivered", "failed", "canceled")

# Twilio's delivery error codes users meet most, in Twilio's words.
ERROR_TEXTS: Mapping[str, str] = {
    "30001": "Queue overflow",
    "30002": "Account suspended",
    "30003": "Unreachable destination handset",
    "30004": "Message blocked",
    "30005": "Unknown destination handset",
    "30006": "Landline or unreachable carrier",
    "30007": "Message filtered by the carrier",
    "30008": "Unknown error",
    "30034": "Message from an unregistered number",
}


def twilio_signature_valid(
    *, dispatcher: Dispatcher, url: str, params: object, signature: str
) -> bool:
    """Whether Twilio signed this request with the dispatcher's auth token
    (X-Twilio-Signature: HMAC-SHA1 of the exact URL and the sorted POST
    parameters)."""
    token = reveal(dispatcher.twilio_auth_token)
    if not (token and signature):
        return False
    return bool(RequestValidator(token).validate(url, params, signature))


def sms_status_record(*, dispatcher_id: int, sid: str, status: str, error_code: str = "") -> int:
    """Apply one status callback to the item with this message SID; returns
    how many items changed (0 for an unknown SID, an unknown status, or
    one that would move the item backwards)."""
    rank = STATUS_RANK.get(status)
    if not sid or not rank:
        return 0
    behind = [name for name, r in STATUS_RANK.items() if r < rank]
    items = CampaignItem.objects.filter(
        queue_id=sid, campaign__dispatcher_id=dispatcher_id, provider_status__in=behind
    )
    if status not in _FAILED:
        return items.update(provider_status=status)
    text = f"Twilio: message {status}"
    if error_code:
        meaning = ERROR_TEXTS.get(error_code)
        text = (
            f"Twilio error {error_code}: {meaning} ({status})"
            if meaning
            else (f"Twilio error {error_code} ({status})")
        )
    # One conditional update: a sent item becomes failed; anything else
    # (already failed or bounced) only records what Twilio said.
    return items.update(
        provider_status=status,
        status=Case(When(status=S.SENT, then=Value(S.FAILED)), default=F("status")),
        smtp_response=text[:500],
    )
