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
from email_validator import EmailNotValidError, validate_email

from dispatchers.models import Dispatcher
from dispatchers.signing import signer_for
from dispatchers.transports.base import ConnectionLost, Outcome, Transport, transport_for
from dispatchers.transports.smtp import SmtpTransport
from smtpservers.services import personal_server_for

from . import sms
from .messages import MessageBuildError, message_build, template_compile
from .models import Campaign, CampaignItem, Contact, MarketingConfiguration, Template
from .sms import SmsPreview

logger = logging.getLogger(__name__)

TEST_SEND_MAX = 10
CONTACT_SEARCH_LIMIT = 20

# --- SMS ----------------------------------------------------------------------


def sms_preview(*, template: Template, contact: Contact) -> SmsPreview | None:
    """The SMS tab: the body as a batch renders it, with its segments; None
    when the template has no SMS body."""
    if not template.sms_body.strip():
        return None
    try:
        return sms.sms_preview(template=template, contact=contact)
    except sms.SmsBuildError as exc:
        return SmsPreview(text="", encoding="", segments=0, error=str(exc))


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
    compiled = template_compile(template=template, footer=MarketingConfiguration.load())
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
