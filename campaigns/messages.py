"""Turning a template and a contact into a finished email message.

Templates are compiled once per batch (``template_compile``), and with
them what a campaign's messages share (``message_skeleton``); each
recipient then costs a render and the encoding of what is theirs
(``message_render``), written straight to wire bytes (a WireMessage).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import formataddr, formatdate
from html import escape as html_escape
from urllib.parse import quote

import css_inline
import html2text
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.template import Context, defaultfilters
from django.template import Template as DjangoTemplate
from django.template.base import TextNode, Variable, VariableNode
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.encoding import force_bytes

from dispatchers.models import Dispatcher
from dispatchers.transports.base import WIRE_POLICY, WireMessage
from smtpservers.validators import validate_header_value

from .models import Campaign, CampaignItem, Contact, MarketingConfiguration, Template
from .preferences import PreferenceLinks
from .sandbox import HTML_ENGINE, TEXT_ENGINE, Fields
from .tracking import tracking_source, tracking_url

UNSUBSCRIBE_SALT = "herald.unsubscribe"


class MessageBuildError(Exception):
    """The data cannot make a safe message (e.g. a header would break)."""


# The variables a template may use without Django's renderer: plain strings
# of every message, and the contact's attributes one level down
# (contact.attributes.<key>). A template made of text and these (optionally
# with |default:"literal" or |urlencode) is rendered by joining strings,
# ~10 times faster and with the same output; anything else (tags, other
# filters, other lookups) goes through Django. So does a message whose
# values are not all strings (an attribute missing, a number, a list): the
# fast path never guesses how Django would print them.
_SIMPLE_VARIABLES = frozenset(
    {
        ("contact", "email"),
        ("contact", "first_name"),
        ("contact", "last_name"),
        ("contact", "full_name"),
        ("contact", "language"),
        ("campaign", "name"),
        ("unsubscribe_url",),
        ("manage_subscriptions_url",),
        ("tracking_url",),
    }
)
_ATTRIBUTES = ("contact", "attributes")

_ATTRIBUTE_PREFIX = "contact.attributes."

# (text, None, None, False) or (None, variable, default literal or None, urlencode)
Pieces = tuple[tuple[str | None, str | None, str | None, bool], ...]


def _simple_name(lookups: tuple[str, ...] | None) -> str | None:
    if lookups in _SIMPLE_VARIABLES:
        return ".".join(lookups)
    if lookups is not None and len(lookups) == 3 and lookups[:2] == _ATTRIBUTES:
        return ".".join(lookups)
    return None


def _pieces(template: DjangoTemplate) -> Pieces | None:
    """The template as text and simple variables, or None if it is more."""
    pieces: list[tuple[str | None, str | None, str | None, bool]] = []
    for node in template.nodelist:
        if type(node) is TextNode:
            pieces.append((node.s, None, None, False))
            continue
        if type(node) is not VariableNode:
            return None
        expression = node.filter_expression
        var = expression.var
        if type(var) is not Variable or var.translate:
            return None
        name = _simple_name(var.lookups)
        if name is None or len(expression.filters) > 1:
            return None
        default, urlencode = None, False
        if expression.filters:
            function, args = expression.filters[0]
            if function is defaultfilters.urlencode and not args:
                urlencode = True
            elif function is defaultfilters.default and len(args) == 1 and not args[0][0]:
                default = args[0][1]  # a literal: Django marks it safe, never escaped
                if not isinstance(default, str):
                    return None
            else:
                return None
        pieces.append((None, name, default, urlencode))
    return tuple(pieces)


def _attribute_keys(*pieces: Pieces | None) -> tuple[str, ...]:
    """The contact attributes the pieces read, to look up once a message."""
    names = {name for part in pieces for _, name, _, _ in part or () if name}
    return tuple(sorted(n for n in names if n.startswith(_ATTRIBUTE_PREFIX)))


def _join(
    pieces: Pieces, values: dict[str, str | int], autoescape: bool, quoted: dict[str, str]
) -> str:
    """The pieces with the values put in. ``quoted``: values already URL-
    encoded for this message (a link per article repeats the same one)."""
    out = []
    for text, name, default, urlencode in pieces:
        if text is not None:
            out.append(text)
            continue
        value = values[name]  # type: ignore[index]
        if default is not None and not value:  # Django's default: 0 and "" alike
            out.append(default)
            continue
        value = value if type(value) is str else str(value)  # an int, printed as Django does
        if urlencode:
            encoded = quoted.get(value)
            if encoded is None:
                # Django's urlencode; its result is escaped
                encoded = quoted[value] = quote(value, safe="/")
            value = encoded
        out.append(html_escape(value) if autoescape else value)
    return "".join(out)


@dataclass(frozen=True)
class CompiledTemplate:
    subject: DjangoTemplate
    text: DjangoTemplate | None  # None: generated from the HTML
    html: DjangoTemplate | None
    # The same as text and simple variables, when they are only that.
    subject_pieces: Pieces | None = None
    text_pieces: Pieces | None = None
    html_pieces: Pieces | None = None
    attribute_keys: tuple[str, ...] = ()  # the attributes the pieces read


def template_compile(
    *,
    template: Template,
    footer: MarketingConfiguration | None = None,
    campaign: Campaign | None = None,
) -> CompiledTemplate:
    """Parse the template once per batch; the HTML's CSS is inlined here too
    (mail clients drop <style> blocks), on the source, not per message.
    The Marketing configuration's footers are added to the sources, and a
    tracking campaign's links and pixel (tracking.py), before parsing."""
    html_source = template.html_body if template.html_body.strip() else ""
    text_source = template.text_body if template.text_body.strip() else ""
    if footer is not None:
        html_source, text_source = _footers_add(footer, html_source, text_source)
    if campaign is not None and html_source:
        html_source = tracking_source(campaign=campaign, html_source=html_source)
    html = HTML_ENGINE.from_string(_inline_css(html_source)) if html_source else None
    text = TEXT_ENGINE.from_string(text_source) if text_source else None
    subject = TEXT_ENGINE.from_string(template.subject)
    subject_pieces = _pieces(subject)
    text_pieces = _pieces(text) if text is not None else None
    html_pieces = _pieces(html) if html is not None else None
    return CompiledTemplate(
        subject=subject,
        text=text,
        html=html,
        subject_pieces=subject_pieces,
        text_pieces=text_pieces,
        html_pieces=html_pieces,
        attribute_keys=_attribute_keys(subject_pieces, text_pieces, html_pieces),
    )


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _footers_add(footer: MarketingConfiguration, html: str, text: str) -> tuple[str, str]:
    """The rich-text footer before the HTML's last </body> (or at its end);
    the plain-text footer after the text part. A text part generated from
    the HTML gets the HTML footer that way, not a second one."""
    if html and footer.html_footer.strip():
        ends = list(_BODY_END.finditer(html))
        at = ends[-1].start() if ends else len(html)
        html = html[:at] + footer.html_footer + html[at:]
    if text and footer.text_footer.strip():
        text = text.rstrip("\n") + "\n\n" + footer.text_footer
    return html, text


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
    mac = _tag_hmac(tag, settings.SECRET_KEY).copy()
    mac.update(token.encode())
    return mac.hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def _tag_hmac(tag: str, secret: str | bytes) -> hmac.HMAC:
    """salted_hmac's key, derived once (a hash of salt and secret) rather
    than for every address: the signature is the same."""
    return salted_hmac(f"herald.{tag}", b"", secret)


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


def _header(value: str) -> str:
    try:
        validate_header_value(value)
    except ValidationError as exc:
        raise MessageBuildError(exc.messages[0]) from exc
    return value


# --- the wire form, built directly ------------------------------------------
#
# EmailMessage costs ~1.3 ms a message (header objects, a content manager,
# a generator); a campaign message has a fixed shape, so it is written as
# bytes instead: what is the same for a whole campaign is compiled once per
# batch (MessageSkeleton), and each recipient costs a render plus encoding
# of what changes. The output is what EmailMessage would put on the wire
# (CRLF, RFC 2047 encoded words for non-ASCII headers, 7bit bodies when
# ASCII with lines within 998 octets, else quoted-printable or base64), and
# parses back to the same headers and parts (tests/campaigns/test_wire.py).

_ASCII = bytes(range(128))
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z"
)
_SOFT_LIMIT, _HARD_LIMIT = 78, 998  # RFC 5322 line lengths, CRLF excluded
_WORD_OCTETS = 39  # UTF-8 octets per encoded word: 52 base64 chars, 64 in all


def _encoded_words(value: str) -> list[bytes]:
    """RFC 2047 'B' encoded words, each of whole characters."""
    data = value.encode()
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_OCTETS, len(data))
        while end < len(data) and 0x80 <= data[end] < 0xC0:  # not mid-character
            end -= 1
        words.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False) + b"?=")
        start = end
    return words


def _fold(line: bytes, first: int) -> bytes | None:
    """Fold an ASCII header line before spaces (from ``first`` on) so lines
    stay within 78 octets where words allow; None if a word passes 998."""
    if len(line) <= _SOFT_LIMIT:
        return line + b"\r\n"
    pieces, start = [], 0
    while len(line) - start > _SOFT_LIMIT:
        cut = line.rfind(b" ", max(start + 1, first), start + _SOFT_LIMIT + 1)
        if cut == -1:
            cut = line.find(b" ", max(start + _SOFT_LIMIT, first))  # a long word
            if cut == -1:
                break
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    if any(len(piece) > _HARD_LIMIT for piece in pieces):
        return None
    return b"\r\n".join(pieces) + b"\r\n"


def _unstructured(name: bytes, value: str) -> bytes:
    """A Subject-like header: as is when printable ASCII, else encoded."""
    if value.isascii() and value.isprintable() and "=?" not in value:
        folded = _fold(name + b": " + value.encode(), len(name) + 2)
        if folded is not None:
            return folded
    return name + b": " + b"\r\n ".join(_encoded_words(value)) + b"\r\n"


def _policy_header(name: str, value: str) -> bytes:
    """A header rendered exactly as EmailMessage would: for values once per
    batch (From, Reply-To) and for the rare address the fast path declines."""
    stored = WIRE_POLICY.header_store_parse(name, value)[1]
    return WIRE_POLICY.fold_binary(name, stored)


def _to_header(display: str, addr: str) -> tuple[bytes, str]:
    """The To header line and its decoded value."""
    if not _PLAIN_ADDRESS.match(addr):  # quoted or non-ASCII local parts, etc.
        try:
            to = str(Address(display_name=display, addr_spec=addr))
        except (ValueError, IndexError, HeaderParseError) as exc:
            raise MessageBuildError(f"Cannot address {addr!r}: {exc}") from exc
        return _policy_header("To", _header(to)), to
    _header(display)
    if not display:
        return b"To: " + addr.encode() + b"\r\n", addr
    if display.isascii() and display.isprintable() and "=?" not in display:
        if _ATOMS.match(display):
            phrase = display
        else:
            phrase = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
        line = f"To: {phrase} <{addr}>".encode()
        if len(line) <= _SOFT_LIMIT:
            return line + b"\r\n", f"{phrase} <{addr}>"
        if len(line) - len(addr) <= _HARD_LIMIT:
            return f"To: {phrase}\r\n <{addr}>\r\n".encode(), f"{phrase} <{addr}>"
    words = b"\r\n ".join(_encoded_words(display))
    return b"To: " + words + b"\r\n <" + addr.encode() + b">\r\n", f"{display} <{addr}>"


_PLAIN_TEXT = b"\t\n" + bytes(range(32, 127))  # no other control character


def _body(text: str, boundary: bytes) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line ends)."""
    lines = text.encode().splitlines()
    data = b"\n".join(lines) + b"\n"
    if data.isascii():
        if max(map(len, lines), default=0) <= _HARD_LIMIT and boundary not in data:
            return b"7bit", data.replace(b"\n", b"\r\n")
        if not data.translate(None, _PLAIN_TEXT) and b" \n" not in data and b"\t\n" not in data:
            return b"quoted-printable", _quoted_printable_ascii(data)
    elif len(data.translate(None, _ASCII)) * 3 > len(data):  # mostly non-Latin: base64 is smaller
        # Of the canonical form: CRLF line ends inside the encoding too.
        return b"base64", base64.encodebytes(data.replace(b"\n", b"\r\n")).replace(b"\n", b"\r\n")
    # Quoted-printable writes "=" as "=3D", so the boundary (which has "=_")
    # cannot occur in it.
    return b"quoted-printable", binascii.b2a_qp(data).replace(b"\n", b"\r\n")


def _quoted_printable_ascii(data: bytes) -> bytes:
    """Quoted-printable of printable ASCII (HTML with long lines, mostly),
    three times faster than binascii's: only "=" needs escaping, and lines
    get soft breaks at 76 octets, never inside an escape."""
    out = []
    for line in data.replace(b"=", b"=3D").split(b"\n"):
        start, end = 0, len(line)
        while end - start > 76:
            cut = start + 75
            if line[cut - 1] == 61:  # "=": keep "=3D" whole
                cut -= 1
            elif line[cut - 2] == 61:
                cut -= 2
            out.append(line[start:cut] + b"=")
            start = cut
        out.append(line[start:])
    return b"\r\n".join(out)


def _part_header(content_type: bytes) -> dict[bytes, bytes]:
    return {
        cte: b"Content-Type: " + content_type + b'; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n"
        for cte in (b"7bit", b"quoted-printable", b"base64")
    }


_TEXT_PART, _HTML_PART = _part_header(b"text/plain"), _part_header(b"text/html")


class MessageSkeleton:
    """What one campaign's messages share within a batch: the compiled
    template, the constant headers already encoded, the MIME boundary."""

    def __init__(
        self,
        *,
        compiled: CompiledTemplate,
        campaign: Campaign,
        dispatcher: Dispatcher,
        return_domain: str,
    ) -> None:
        self.compiled = compiled
        self.campaign = campaign
        self.return_domain = return_domain
        self.domain = dispatcher.from_email.rpartition("@")[2] or "herald.invalid"
        self.unsubscribe = _UnsubscribeLinks(return_domain)
        self.preferences = PreferenceLinks()
        self.tracking = campaign.track_opens or campaign.track_clicks
        self.campaign_fields = Fields({"name": campaign.name})
        self.boundary = f"=_herald_{secrets.token_hex(12)}".encode()
        self.error = ""  # a constant header that cannot be sent fails every message
        self.sender_headers = b""
        self.headers = {"From": formataddr((dispatcher.from_name, dispatcher.from_email))}
        try:
            self.sender_headers = _policy_header("From", _header(self.headers["From"]))
            if dispatcher.reply_to:
                self.headers["Reply-To"] = dispatcher.reply_to
                self.sender_headers += _policy_header("Reply-To", _header(dispatcher.reply_to))
            if dispatcher.request_read_receipts:
                receipts = _header(dispatcher.from_email)
                self.headers["Disposition-Notification-To"] = receipts
                self.sender_headers += _policy_header("Disposition-Notification-To", receipts)
        except MessageBuildError as exc:
            self.error = str(exc)
        self.headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        self.headers["Feedback-ID"] = f"{campaign.pk}:campaign:herald"
        self.headers["MIME-Version"] = "1.0"
        tail = (
            f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            f"Feedback-ID: {campaign.pk}:campaign:herald\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode()
        if compiled.html is not None:
            self.headers["Content-Type"] = "multipart/alternative"
            self.tail = {
                cte: tail
                + b'Content-Type: multipart/alternative; boundary="'
                + self.boundary
                + b'"\r\n\r\n--'
                + self.boundary
                + b"\r\n"
                + part
                for cte, part in _TEXT_PART.items()
            }
        else:
            self.headers["Content-Type"] = "text/plain"
            self.tail = {cte: tail + part for cte, part in _TEXT_PART.items()}
        self._date = (0, "")

    def date(self) -> str:
        now = int(time.time())  # formatdate per second, not per message
        if self._date[0] != now:
            self._date = (now, formatdate(now, localtime=False))
        return self._date[1]


class _BatchSigner(signing.TimestampSigner):
    """Django's TimestampSigner (same signatures, so ``signing.loads`` reads
    them), with its HMAC key derived once instead of for every value."""

    def __init__(self, *, salt: str) -> None:
        super().__init__(salt=salt)
        self._hmac = salted_hmac(self.salt + "signer", b"", self.key, algorithm=self.algorithm)

    def signature(self, value: str | bytes, key: str | bytes | None = None) -> str:
        if key is not None:
            return super().signature(value, key)
        mac = self._hmac.copy()
        mac.update(force_bytes(value))
        return signing.b64_encode(mac.digest()).decode()


class _UnsubscribeLinks:
    """The List-Unsubscribe links and the page URL, signed per item.

    Same values as ``unsubscribe_url``/``tagged_address``, with the URL
    pattern reversed once and the HMAC keys derived once per batch."""

    def __init__(self, return_domain: str) -> None:
        path = reverse("campaigns:unsubscribe", args=["SIGNED"])
        self.before, _, self.after = (settings.HERALD_PUBLIC_URL + path).rpartition("SIGNED")
        self.signer = _BatchSigner(salt=UNSUBSCRIBE_SALT)
        self.return_domain = return_domain
        self.mailto = settings.HERALD_LIST_UNSUBSCRIBE_MAILTO

    def url(self, token: str) -> str:
        return self.before + self.signer.sign_object(token) + self.after

    def header(self, url: str, token: str) -> str:
        links = f"<{url}>"
        if self.mailto:
            address = tagged_address(tag=UNSUBSCRIBE_TAG, token=token, domain=self.return_domain)
            links += f", <mailto:{address}?subject=unsubscribe>"
        return links


def message_skeleton(
    *,
    campaign: Campaign,
    dispatcher: Dispatcher,
    return_domain: str | None = None,
    compiled: CompiledTemplate | None = None,
) -> MessageSkeleton:
    """Compile, once per batch and campaign, what its messages share."""
    return MessageSkeleton(
        compiled=compiled or template_compile(template=campaign.template, campaign=campaign),
        campaign=campaign,
        dispatcher=dispatcher,
        return_domain=return_domain or bounce_domain(dispatcher),
    )


@dataclass(slots=True)
class Recipient:
    """What sending reads of a contact: its message (``message_render``, the
    template's ``contact``) and the send-time checks. A batch reads these
    as plain rows: a Contact model instance costs ~20 us more a message."""

    pk: int
    email: str
    first_name: str
    last_name: str
    language: str
    attributes: object
    status: str

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass(slots=True)
class SendingItem:
    """What sending reads and writes of a claimed campaign item (see
    Recipient): the same names as CampaignItem's."""

    pk: int
    campaign_id: int
    batch_id: int
    token: str
    attempts: int
    first_attempt_at: datetime | None
    provider_group: str
    contact: Recipient


def message_render(
    *,
    skeleton: MessageSkeleton,
    item: CampaignItem | SendingItem,
    contact: Contact | Recipient,
) -> WireMessage:
    """One recipient's message, ready for the wire."""
    if skeleton.error:
        raise MessageBuildError(skeleton.error)
    token = item.token
    url = skeleton.unsubscribe.url(token)
    compiled = skeleton.compiled
    simple = {
        "contact.email": contact.email,
        "contact.first_name": contact.first_name,
        "contact.last_name": contact.last_name,
        "contact.full_name": contact.full_name,
        "contact.language": contact.language,
        "campaign.name": skeleton.campaign.name,
        "unsubscribe_url": url,
        "manage_subscriptions_url": skeleton.preferences.url(contact.pk),
        "tracking_url": tracking_url(token) if skeleton.tracking else "",
    }
    if compiled.attribute_keys:
        attributes = contact.attributes if type(contact.attributes) is dict else {}
        for name in compiled.attribute_keys:
            simple[name] = attributes.get(name[len(_ATTRIBUTE_PREFIX) :])
    # Whole numbers print as str() does, unless thousands are grouped (no
    # other kind of number in a JSON attribute prints the same way).
    plain = (str,) if settings.USE_THOUSAND_SEPARATOR else (str, int)
    if not all(type(value) in plain for value in simple.values()):
        simple = {}  # e.g. a NULL from raw SQL: Django renders it as it always has
    quoted: dict[str, str] = {}
    subject = _render(
        compiled.subject, compiled.subject_pieces, simple, skeleton, contact, url, token, quoted
    )
    subject = _header(subject.strip())
    to_line, to = _to_header(contact.full_name, contact.email)
    html = None
    if compiled.html is not None:
        html = _render(
            compiled.html, compiled.html_pieces, simple, skeleton, contact, url, token, quoted
        )
    if compiled.text is not None:
        text = _render(
            compiled.text, compiled.text_pieces, simple, skeleton, contact, url, token, quoted
        )
    else:
        text = html_to_text(html or "")
    date = skeleton.date()
    message_id = f"<{token}@{skeleton.domain}>"
    unsubscribe = skeleton.unsubscribe.header(url, token)
    text_cte, text_body = _body(text, skeleton.boundary)
    chunks = [
        _unstructured(b"Subject", subject),
        skeleton.sender_headers,
        to_line,
        f"Date: {date}\r\nMessage-ID: {message_id}\r\n".encode(),
        _list_unsubscribe_line(unsubscribe),
        skeleton.tail[text_cte],
        text_body,
    ]
    if html is not None:
        boundary = skeleton.boundary
        html_cte, html_body = _body(html, boundary)
        chunks += [b"\r\n--", boundary, b"\r\n", _HTML_PART[html_cte], html_body]
        chunks += [b"\r\n--", boundary, b"--\r\n"]
    headers = {
        **skeleton.headers,
        "Subject": subject,
        "To": to,
        "Date": date,
        "Message-ID": message_id,
        "List-Unsubscribe": unsubscribe,
    }
    return WireMessage(b"".join(chunks), headers)


def _render(
    template: DjangoTemplate,
    pieces: Pieces | None,
    simple: dict[str, str | int],
    skeleton: MessageSkeleton,
    contact: Contact | Recipient,
    url: str,
    item_token: str,
    quoted: dict[str, str],
) -> str:
    # Escaping is for HTML only: a subject or text part keeps "O'Brien".
    autoescape = template.engine.autoescape
    if pieces is not None and simple:
        return _join(pieces, simple, autoescape, quoted)
    values = {
        "contact": Fields(contact_values(contact)),
        "campaign": skeleton.campaign_fields,
        "unsubscribe_url": url,
        "manage_subscriptions_url": skeleton.preferences.url(contact.pk),
        "tracking_url": tracking_url(item_token) if skeleton.tracking else "",
    }
    return template.render(Context(values, autoescape=autoescape))


def contact_values(contact: Contact | Recipient) -> dict[str, object]:
    """What templates see of a contact: plain data only (see sandbox.py)."""
    return {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "full_name": contact.full_name,
        "language": contact.language,
        "attributes": contact.attributes or {},
    }


def _list_unsubscribe_line(value: str) -> bytes:
    # URLs stay whole (mailbox providers cannot use encoded words); folded
    # between the links only if the line would pass 998 octets.
    try:
        line = b"List-Unsubscribe: " + value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MessageBuildError(f"The unsubscribe link is not ASCII: {value!r}") from exc
    if len(line) > _HARD_LIMIT:
        line = line.replace(b", <", b",\r\n <")
    return line + b"\r\n"


def message_build(
    *,
    compiled: CompiledTemplate,
    item: CampaignItem,
    contact: Contact,
    campaign: Campaign,
    dispatcher: Dispatcher,
    return_domain: str | None = None,
) -> WireMessage:
    """One recipient's message without a batch around it (previews, tests):
    a skeleton of its own, then ``message_render``."""
    skeleton = message_skeleton(
        campaign=campaign, dispatcher=dispatcher, return_domain=return_domain, compiled=compiled
    )
    return message_render(skeleton=skeleton, item=item, contact=contact)


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
        compiled=template_compile(template=template, footer=MarketingConfiguration.load()),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=dispatcher,
    )
    parsed = message.parsed()  # what a mail client would show
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    return Preview(
        subject=str(parsed["Subject"]),
        text=text_part.get_content() if text_part is not None else "",
        html=html_part.get_content() if html_part is not None else None,
    )
