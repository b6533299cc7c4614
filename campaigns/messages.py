"""Turning a template and a contact into a finished email message.

Templates are compiled once per batch (``template_compile``); each
recipient then costs only a render and a MIME build.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.template import Context, Engine
from django.template import Template as DjangoTemplate
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

from dispatchers.models import Dispatcher
from smtpservers.validators import validate_header_value

from .models import Campaign, CampaignItem, Contact, Template

_TEXT_ENGINE = Engine(autoescape=False)
_HTML_ENGINE = Engine(autoescape=True)
UNSUBSCRIBE_SALT = "herald.unsubscribe"


class MessageBuildError(Exception):
    """The data cannot make a safe message (e.g. a header would break)."""


@dataclass(frozen=True)
class CompiledTemplate:
    subject: DjangoTemplate
    text: DjangoTemplate
    html: DjangoTemplate | None


def template_compile(*, template: Template) -> CompiledTemplate:
    return CompiledTemplate(
        subject=_TEXT_ENGINE.from_string(template.subject),
        text=_TEXT_ENGINE.from_string(template.text_body),
        html=_HTML_ENGINE.from_string(template.html_body) if template.html_body else None,
    )


def unsubscribe_url(*, token: str) -> str:
    signed = signing.dumps(token, salt=UNSUBSCRIBE_SALT)
    return settings.HERALD_PUBLIC_URL + reverse("campaigns:unsubscribe", args=[signed])


def _verp_signature(token: str) -> str:
    # Short on purpose: the whole local part must stay within 64 octets.
    return salted_hmac("herald.verp", token).hexdigest()[:12]


def verp_address(*, token: str, domain: str) -> str:
    """The return path that lets a bounce find its item: bounces+<token>.<sig>@domain."""
    return f"bounces+{token}.{_verp_signature(token)}@{domain}"


def verp_token(address: str) -> str | None:
    """The item token of a VERP return path, or None if it is not ours."""
    local = address.partition("@")[0]
    if not local.startswith("bounces+"):
        return None
    token, _, signature = local.removeprefix("bounces+").partition(".")
    if not constant_time_compare(signature, _verp_signature(token)):
        return None
    return token


def bounce_domain(dispatcher: Dispatcher) -> str:
    return settings.HERALD_BOUNCE_DOMAIN or dispatcher.from_email.rpartition("@")[2]


def _context(contact: Contact, campaign: Campaign, token: str) -> Context:
    return Context(
        {
            "contact": {
                "email": contact.email,
                "first_name": contact.first_name,
                "last_name": contact.last_name,
                "full_name": contact.full_name,
                "attributes": contact.attributes,
            },
            "campaign": {"name": campaign.name},
            "unsubscribe_url": unsubscribe_url(token=token),
        }
    )


def _header(value: str) -> str:
    try:
        validate_header_value(value)
    except ValidationError as exc:
        raise MessageBuildError(exc.messages[0]) from exc
    return value


def message_build(
    *,
    compiled: CompiledTemplate,
    item: CampaignItem,
    contact: Contact,
    campaign: Campaign,
    dispatcher: Dispatcher,
) -> EmailMessage:
    context = _context(contact, campaign, item.token)
    domain = dispatcher.from_email.rpartition("@")[2] or "herald.invalid"
    msg = EmailMessage()
    msg["Subject"] = _header(compiled.subject.render(context).strip())
    msg["From"] = _header(formataddr((dispatcher.from_name, dispatcher.from_email)))
    try:
        to = str(Address(display_name=contact.full_name, addr_spec=contact.email))
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise MessageBuildError(f"Cannot address {contact.email!r}: {exc}") from exc
    msg["To"] = _header(to)
    if dispatcher.reply_to:
        msg["Reply-To"] = _header(dispatcher.reply_to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{item.token}@{domain}>"
    msg["List-Unsubscribe"] = f"<{context['unsubscribe_url']}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = f"{campaign.pk}:campaign:herald"
    msg.set_content(compiled.text.render(context))
    if compiled.html is not None:
        msg.add_alternative(compiled.html.render(context), subtype="html")
    return msg
