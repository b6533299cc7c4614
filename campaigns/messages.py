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

import css_inline
import html2text
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.template import Context
from django.template import Template as DjangoTemplate
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

from dispatchers.models import Dispatcher
from smtpservers.validators import validate_header_value

from .models import Campaign, CampaignItem, Contact, Template
from .sandbox import HTML_ENGINE, TEXT_ENGINE, Fields

UNSUBSCRIBE_SALT = "herald.unsubscribe"


class MessageBuildError(Exception):
    """The data cannot make a safe message (e.g. a header would break)."""


@dataclass(frozen=True)
class CompiledTemplate:
    subject: DjangoTemplate
    text: DjangoTemplate | None  # None: generated from the HTML
    html: DjangoTemplate | None


def template_compile(*, template: Template) -> CompiledTemplate:
    """Parse the template once per batch; the HTML's CSS is inlined here too
    (mail clients drop <style> blocks), on the source, not per message."""
    html = None
    if template.html_body.strip():
        html = HTML_ENGINE.from_string(_inline_css(template.html_body))
    text = TEXT_ENGINE.from_string(template.text_body) if template.text_body.strip() else None
    return CompiledTemplate(subject=TEXT_ENGINE.from_string(template.subject), text=text, html=html)


def _inline_css(html: str) -> str:
    try:
        return css_inline.inline(html)
    except ValueError:  # css-inline refuses what it cannot parse: send as written
        return html


def html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0  # no hard wrapping: mail clients wrap
    converter.ignore_images = True
    return converter.handle(html).strip() + "\n"


def unsubscribe_url(*, token: str) -> str:
    signed = signing.dumps(token, salt=UNSUBSCRIBE_SALT)
    return settings.HERALD_PUBLIC_URL + reverse("campaigns:unsubscribe", args=[signed])


# Addresses that carry a signed item token in their local part, so what
# comes back to them finds its item: tag+<token>.<sig>@domain.
VERP_TAG = "bounces"  # the return path: bounces find their item
UNSUBSCRIBE_TAG = "unsubscribe"  # the List-Unsubscribe mailto: address


def _tag_signature(tag: str, token: str) -> str:
    # Short on purpose: the whole local part must stay within 64 octets.
    return salted_hmac(f"herald.{tag}", token).hexdigest()[:12]


def tagged_address(*, tag: str, token: str, domain: str) -> str:
    return f"{tag}+{token}.{_tag_signature(tag, token)}@{domain}"


def tagged_token(*, tag: str, address: str) -> str | None:
    """The item token of a tagged address, or None if it is not ours."""
    local = address.partition("@")[0].lower()
    if not local.startswith(f"{tag}+"):
        return None
    token, _, signature = local.removeprefix(f"{tag}+").partition(".")
    if not constant_time_compare(signature, _tag_signature(tag, token)):
        return None
    return token


def verp_address(*, token: str, domain: str) -> str:
    """The return path that lets a bounce find its item."""
    return tagged_address(tag=VERP_TAG, token=token, domain=domain)


def verp_token(address: str) -> str | None:
    return tagged_token(tag=VERP_TAG, address=address)


def bounce_domain(dispatcher: Dispatcher) -> str:
    """Where bounces come back: the sender domain's return-path domain, else
    HERALD_BOUNCE_DOMAIN, else the domain of the sender address."""
    domain = dispatcher.sender_domain
    if domain is not None and domain.return_path_domain:
        return domain.return_path_domain
    return settings.HERALD_BOUNCE_DOMAIN or dispatcher.from_domain


def _list_unsubscribe(url: object, token: str, return_domain: str) -> str:
    """RFC 2369/8058: the signed https link, and a mailto: address when the
    return-path domain's mail is read by a bounce mailbox (which honours it)."""
    links = [f"<{url}>"]
    if settings.HERALD_LIST_UNSUBSCRIBE_MAILTO:
        address = tagged_address(tag=UNSUBSCRIBE_TAG, token=token, domain=return_domain)
        links.append(f"<mailto:{address}?subject=unsubscribe>")
    return ", ".join(links)


def _context(contact: Contact, campaign: Campaign, token: str) -> dict[str, object]:
    # Plain data only (see sandbox.py): templates never see a model.
    return {
        "contact": Fields(
            {
                "email": contact.email,
                "first_name": contact.first_name,
                "last_name": contact.last_name,
                "full_name": contact.full_name,
                "language": contact.language,
                "attributes": contact.attributes or {},
            }
        ),
        "campaign": Fields({"name": campaign.name}),
        "unsubscribe_url": unsubscribe_url(token=token),
    }


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
    return_domain: str | None = None,
) -> EmailMessage:
    """One recipient's message. A batch passes ``return_domain`` (its
    bounce_domain, looked up once) so no message pays for that lookup."""
    return_domain = return_domain or bounce_domain(dispatcher)
    values = _context(contact, campaign, item.token)
    # Escaping is for HTML only: a subject or text part keeps "O'Brien".
    plain, markup = Context(values, autoescape=False), Context(values, autoescape=True)
    domain = dispatcher.from_email.rpartition("@")[2] or "herald.invalid"
    msg = EmailMessage()
    msg["Subject"] = _header(compiled.subject.render(plain).strip())
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
    msg["List-Unsubscribe"] = _list_unsubscribe(
        values["unsubscribe_url"], item.token, return_domain
    )
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = f"{campaign.pk}:campaign:herald"
    html = compiled.html.render(markup) if compiled.html is not None else None
    text = compiled.text.render(plain) if compiled.text is not None else html_to_text(html or "")
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


@dataclass(frozen=True)
class Preview:
    subject: str
    text: str
    html: str | None


def template_preview(*, template: Template, contact: Contact) -> Preview:
    """The message as the pipeline would build it for this contact, from
    an unsaved campaign: nothing is stored, and the unsubscribe link in it
    leads nowhere."""
    campaign = Campaign(name=template.name, template=template)
    dispatcher = Dispatcher(from_email="preview@herald.invalid", from_name="Herald preview")
    item = CampaignItem(campaign=campaign, contact=contact, token="preview")
    message = message_build(
        compiled=template_compile(template=template),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=dispatcher,
    )
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    return Preview(
        subject=str(message["Subject"]),
        text=text_part.get_content() if text_part is not None else "",
        html=html_part.get_content() if html_part is not None else None,
    )
