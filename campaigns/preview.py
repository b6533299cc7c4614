"""Preview of a template for one contact (subject, HTML, text, SMS with its
segment count) and the test send to a few addresses."""

from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.template import Context
from email_validator import EmailNotValidError, validate_email

from dispatchers.models import Dispatcher
from dispatchers.signing import signer_for
from dispatchers.transports.base import ConnectionLost, Outcome, Transport, transport_for
from dispatchers.transports.smtp import SmtpTransport
from smtpservers.services import personal_server_for

from .messages import MessageBuildError, _context, message_build, template_compile
from .models import Campaign, CampaignItem, Contact, Template
from .sandbox import TEXT_ENGINE

logger = logging.getLogger(__name__)

TEST_SEND_MAX = 10
CONTACT_SEARCH_LIMIT = 20

# --- SMS segments ------------------------------------------------------------

# The GSM 03.38 default alphabet (one septet each) and its extension table
# (two septets: the escape and the character).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")


def _segments(units: list[int], single: int, multi: int) -> int:
    """Segments for characters of the given widths: one if all fit in
    `single`; otherwise parts of `multi` (the rest is the concatenation
    header), never splitting a character across two parts."""
    total = sum(units)
    if total == 0:
        return 0
    if total <= single:
        return 1
    count, used = 1, 0
    for width in units:
        if used + width > multi:
            count, used = count + 1, 0
        used += width
    return count


def sms_segments(text: str) -> tuple[str, int]:
    """("GSM-7" or "UCS-2", how many SMS the text takes): GSM-7 160 in one,
    153 per part; UCS-2 (any character outside GSM-7) 70 in one, 67 per
    part, counted in UTF-16 code units (an emoji is two)."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text):
        return "GSM-7", _segments([2 if ch in GSM7_EXTENDED else 1 for ch in text], 160, 153)
    return "UCS-2", _segments([1 if ord(ch) < 0x10000 else 2 for ch in text], 70, 67)


@dataclass(frozen=True)
class SmsPreview:
    text: str
    encoding: str
    segments: int

    @property
    def characters(self) -> int:
        return len(self.text)


def sms_preview(*, template: Template, contact: Contact) -> SmsPreview | None:
    """The SMS body rendered for the contact, with the context the email
    pipeline gives; None when the template has no SMS body."""
    if not template.sms_body.strip():
        return None
    campaign = Campaign(name=template.name, template=template)
    rendered = TEXT_ENGINE.from_string(template.sms_body).render(
        Context(_context(contact, campaign, "preview"), autoescape=False)
    )
    text = rendered.strip()
    encoding, segments = sms_segments(text)
    return SmsPreview(text=text, encoding=encoding, segments=segments)


# --- picking a contact -------------------------------------------------------


def contacts_search(*, query: str) -> QuerySet[Contact]:
    """Contacts whose address starts with the query (the unique email index
    serves the prefix, so this stays quick with a million contacts)."""
    query = query.strip().lower()
    contacts = Contact.objects.order_by("email")
    if query:
        contacts = contacts.filter(email__startswith=query)
    return contacts[:CONTACT_SEARCH_LIMIT]


def sample_contact() -> Contact:
    """Who the preview shows before the marketer picks someone: unsaved."""
    return Contact(
        email="jane.doe@example.org",
        first_name="Jane",
        last_name="Doe",
        language="en",
        attributes={},
    )


# --- test send ---------------------------------------------------------------


@dataclass(frozen=True)
class RecipientResult:
    address: str
    sent: bool
    detail: str


def recipients_clean(recipients: list[str]) -> list[str]:
    """Up to TEST_SEND_MAX well-formed addresses, duplicates dropped; any
    bad one refuses the whole send, naming each problem."""
    errors: list[str] = []
    clean: list[str] = []
    for raw in recipients:
        if any(ch in raw for ch in "\r\n\0"):
            errors.append(f"{raw.strip()!r}: line breaks are not allowed in an address.")
            continue
        address = raw.strip()
        if not address:
            continue
        try:
            normalized = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors.append(f"{address}: {exc}")
            continue
        if normalized.lower() not in (a.lower() for a in clean):
            clean.append(normalized)
    if not errors and not clean:
        errors.append("Enter at least one address.")
    if len(clean) > TEST_SEND_MAX:
        errors.append(f"At most {TEST_SEND_MAX} addresses per test send ({len(clean)} given).")
    if errors:
        raise ValidationError(errors, code="recipients")
    return clean


def _test_transport(dispatcher: Dispatcher, user: AbstractBaseUser) -> Transport:
    """The user's personal outbound server when they chose one, else the
    dispatcher's own delivery (campaigns never use a personal server)."""
    personal = personal_server_for(user=user)
    if personal is not None:
        return SmtpTransport(server=personal)
    return transport_for(dispatcher)


def template_test_send(
    *,
    template: Template,
    contact: Contact,
    dispatcher: Dispatcher,
    recipients: list[str],
    user: AbstractBaseUser,
) -> list[RecipientResult]:
    """Send the template, personalised for `contact`, to a few addresses
    through `dispatcher`, exactly as the pipeline builds and signs it.
    Nothing is stored: no item, no rate budget (ten messages at most)."""
    addresses = recipients_clean(recipients)
    if dispatcher.type != Dispatcher.Type.EMAIL:
        raise ValidationError(f"{dispatcher} is not an email dispatcher.", code="dispatcher")
    compiled = template_compile(template=template)
    campaign = Campaign(name=template.name, template=template, dispatcher=dispatcher)
    signer = signer_for(dispatcher=dispatcher)
    logger.info(
        "Test send of template %s by %s to %d address(es)", template.pk, user, len(addresses)
    )
    transport = _test_transport(dispatcher, user)
    try:
        transport.open()
    except ConnectionLost as exc:
        return [RecipientResult(a, False, f"Could not connect: {exc}") for a in addresses]
    results: list[RecipientResult] = []
    try:
        for i, address in enumerate(addresses):
            # The contact's data, the tester's mailbox.
            tester = copy.copy(contact)
            tester.email = address
            item = CampaignItem(campaign=campaign, contact=tester, token=f"test{uuid.uuid4().hex}")
            try:
                message = message_build(
                    compiled=compiled,
                    item=item,
                    contact=tester,
                    campaign=campaign,
                    dispatcher=dispatcher,
                )
            except MessageBuildError as exc:
                return [RecipientResult(a, False, str(exc)) for a in addresses]
            if signer is not None:
                message = signer.sign(message)
            try:
                result = transport.send(message, sender=dispatcher.from_email, recipient=address)
            except ConnectionLost as exc:
                results += [RecipientResult(a, False, f"Not sent: {exc}") for a in addresses[i:]]
                break
            text = f"{result.code or ''} {result.text}".strip()
            results.append(RecipientResult(address, result.outcome is Outcome.ACCEPTED, text))
    finally:
        transport.close()
    return results
