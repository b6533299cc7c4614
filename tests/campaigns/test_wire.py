"""Campaign messages are written straight to their wire form, not built
with EmailMessage. What a mail client reads back must be what the email
package's own builder made: same headers, same text and HTML parts, for
every script, every line length, and every odd name."""

from __future__ import annotations

import email.policy
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, formatdate

import pytest
from django.core import signing
from django.template import Context

from campaigns.messages import (
    UNSUBSCRIBE_SALT,
    UNSUBSCRIBE_TAG,
    MessageBuildError,
    html_to_text,
    message_build,
    message_render,
    message_skeleton,
    tagged_address,
    template_compile,
    unsubscribe_url,
)
from campaigns.models import Campaign, CampaignItem, Contact, Template
from campaigns.sandbox import Fields
from dispatchers.models import Dispatcher
from dispatchers.transports.base import WIRE_POLICY, message_bytes

RETURN_DOMAIN = "bounces.example.org"


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    settings.HERALD_LIST_UNSUBSCRIBE_MAILTO = True
    # Both builders sign the unsubscribe link with a timestamp and date the
    # message: the same second for both, so their output can be compared.
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.0)


def dispatcher(**fields: str) -> Dispatcher:
    defaults = {"from_email": "news@example.org", "from_name": "Example News"}
    return Dispatcher(**{**defaults, **fields})


def cast(template: Template, **contact_fields: str) -> tuple[CampaignItem, Contact, Campaign]:
    contact = Contact(email="ann@example.net", first_name="Ann", last_name="Lee")
    for name, value in contact_fields.items():
        setattr(contact, name, value)
    campaign = Campaign(pk=7, name="Spring news", template=template)
    return CampaignItem(campaign=campaign, contact=contact, token="t0k3n"), contact, campaign


def reference(template: Template, item: CampaignItem, contact: Contact, sender: Dispatcher):
    """The message as the EmailMessage builder made it before."""
    compiled = template_compile(template=template)
    campaign = item.campaign
    url = unsubscribe_url(token=item.token)
    values = {
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
        "unsubscribe_url": url,
    }
    plain, markup = Context(values, autoescape=False), Context(values, autoescape=True)
    msg = EmailMessage()
    msg["Subject"] = compiled.subject.render(plain).strip()
    msg["From"] = formataddr((sender.from_name, sender.from_email))
    msg["To"] = str(Address(display_name=contact.full_name, addr_spec=contact.email))
    if sender.reply_to:
        msg["Reply-To"] = sender.reply_to
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{item.token}@example.org>"
    mailto = tagged_address(tag=UNSUBSCRIBE_TAG, token=item.token, domain=RETURN_DOMAIN)
    msg["List-Unsubscribe"] = f"<{url}>, <mailto:{mailto}?subject=unsubscribe>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = f"{campaign.pk}:campaign:herald"
    html = compiled.html.render(markup) if compiled.html is not None else None
    if compiled.text is not None:
        text = compiled.text.render(plain)
    else:
        text = html_to_text(html or "")
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=WIRE_POLICY)


def read(raw: bytes) -> dict[str, object]:
    """What a mail client shows of a message."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    shown: dict[str, object] = {
        name: str(msg[name])
        for name in (
            "Subject",
            "Date",
            "Message-ID",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Feedback-ID",
            "MIME-Version",
        )
    }
    for name in ("From", "To", "Reply-To"):
        header = msg[name]
        shown[name] = [(a.display_name, a.addr_spec) for a in header.addresses] if header else None
    shown["content type"] = msg.get_content_type()
    for kind in ("plain", "html"):
        part = msg.get_body((kind,))
        # Line ends come back as CRLF or LF depending on the transfer
        # encoding the builder chose; clients show both alike.
        shown[kind] = part.get_content().replace("\r\n", "\n") if part is not None else None
    shown["defects"] = [type(d).__name__ for p in msg.walk() for d in p.defects]
    return shown


def assert_wire_form(raw: bytes) -> None:
    assert raw.isascii(), "7-bit: no server needs SMTPUTF8 or 8BITMIME"
    assert b"\r\n" in raw and raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def assert_same_as_email_package(template: Template, sender: Dispatcher | None = None, **fields):
    sender = sender or dispatcher()
    item, contact, campaign = cast(template, **fields)
    message = message_build(
        compiled=template_compile(template=template),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=sender,
        return_domain=RETURN_DOMAIN,
    )
    raw = message_bytes(message)
    assert_wire_form(raw)
    shown = read(raw)
    assert shown == read(reference(template, item, contact, sender))
    assert shown["defects"] == []
    # The look-ups transports use agree with what the bytes say.
    assert message.get("Subject") == shown["Subject"]
    assert message["Message-ID"] == shown["Message-ID"]
    assert message.get("list-unsubscribe") == shown["List-Unsubscribe"]
    assert message.get("X-Absent", "none") == "none"
    return message, shown


NEWSLETTER = {
    "subject": "News for {{ contact.first_name }}",
    "text_body": "Dear {{ contact.full_name }},\n\nOur news.\nUnsubscribe: {{ unsubscribe_url }}\n",
    "html_body": "<html><body><p>Dear {{ contact.full_name }},</p>"
    "<p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p></body></html>",
}


@pytest.mark.parametrize(
    ("first_name", "last_name"),
    [
        ("Ann", "Lee"),
        ("Zoë", "Müller-Lüdenscheidt"),  # accents
        ("太郎", "山田"),  # CJK
        ("Ann 🎉", "Lee 🥳"),  # emoji, outside the BMP
        ("Jim (Doc)", 'O\'Brien, "Jr."'),  # specials: quoted in To, escaped in HTML
        ("<b>Ann</b> &", "Lee"),
        ("  Ann", "Lee  "),  # odd spacing
        ("", ""),  # no name at all: a bare address
        ("Ann\tMarie", "Lee"),
    ],
)
def test_names_in_every_script_read_back_as_written(first_name: str, last_name: str) -> None:
    template = Template(name="News", **NEWSLETTER)

    _, shown = assert_same_as_email_package(template, first_name=first_name, last_name=last_name)

    assert shown["Subject"] == f"News for {first_name}".strip()


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln, {{ contact.first_name }}",
        "{{ contact.last_name }}様、春のお知らせです",
        "🎉 Party for {{ contact.first_name }} 🥳",
        "A long subject line " * 15 + "{{ contact.first_name }}",  # folded past 78
        "x" * 1200,  # one word past 998: only encoded words can carry it
        "Ünïcödé " * 40,  # long and non-ASCII
        "Tabs\tand  double  spaces",
    ],
)
def test_subjects_read_back_as_written(subject: str) -> None:
    template = Template(name="News", **{**NEWSLETTER, "subject": subject})

    assert_same_as_email_package(template)


LONG = "word " * 400  # a 2,000-character line: over 998, so encoded


@pytest.mark.parametrize(
    ("text_body", "html_body"),
    [
        ("Plain short lines\nonly.\n", "<p>Short</p>"),
        (LONG + "\nend", "<p>" + LONG + "</p>"),
        ("Price = 10 € " * 200, "<p style='color: red;'>" + "a=b " * 600 + "</p>"),
        ("日本語のテキストです。\n" * 50, "<p>" + "日本語のテキストです。" * 200 + "</p>"),
        ("trailing spaces   \nand tabs\t\nend", "<p>x</p>   \n<p>y</p>\t"),
        ("CRLF\r\nand CR\rline ends\n", "<p>a</p>\r\n<p>b</p>"),
        ("No final newline", "<p>no final newline</p>"),
        ("." + "\n.\n" + "From the start\n--=_herald_not_ours\n", "<pre>.\n..</pre>"),
        ("Control \x01 char " * 100, "<p>bell \x07</p>" + "x" * 1000),
        ("Émoji 🎉 mostly ASCII " * 60, "<p>" + "é=" * 900 + "</p>"),
    ],
)
def test_bodies_of_any_script_and_line_length_read_back_as_written(
    text_body: str, html_body: str
) -> None:
    template = Template(name="News", subject="Hi", text_body=text_body, html_body=html_body)

    assert_same_as_email_package(template)


def test_text_that_looks_like_an_encoded_word_stays_as_written() -> None:
    # The email package decodes such text as if it were encoded ("Ann");
    # the wire form encodes it, so readers see exactly what was written.
    template = Template(name="News", **{**NEWSLETTER, "subject": "50% off =?utf-8?q?Ann?= today"})
    item, contact, campaign = cast(template, first_name="=?utf-8?q?Ann?=")

    raw = message_bytes(
        message_render(
            skeleton=message_skeleton(
                campaign=campaign, dispatcher=dispatcher(), return_domain=RETURN_DOMAIN
            ),
            item=item,
            contact=contact,
        )
    )

    assert_wire_form(raw)
    shown = read(raw)
    assert shown["Subject"] == "50% off =?utf-8?q?Ann?= today"
    assert shown["To"] == [("=?utf-8?q?Ann?= Lee", "ann@example.net")]


def test_a_text_only_template_makes_a_single_part_message() -> None:
    template = Template(name="Plain", subject="Hi", text_body="Dear {{ contact.first_name }}")

    _, shown = assert_same_as_email_package(template, first_name="Zoë")

    assert shown["content type"] == "text/plain" and shown["html"] is None


def test_an_html_only_template_gets_its_generated_text_part() -> None:
    template = Template(
        name="HTML", subject="Hi", html_body="<p>Dear <b>{{ contact.first_name }}</b></p>"
    )

    _, shown = assert_same_as_email_package(template, first_name="Zoë")

    assert "Dear **Zoë**" in str(shown["plain"])


ATTRIBUTES = {
    "plan": "<gold>",
    "city": "São Paulo & Co/1?x=y",
    "orders": 12,
    "zero": 0,
    "empty": "",
    "member": True,
    "score": 4.5,
    "tags": ["a", "<b>"],
}


@pytest.mark.parametrize(
    "body",
    [
        '{{ contact.first_name|default:"<there>" }}',  # the literal is not escaped
        "{{ contact.first_name|upper }}",
        "{% if contact.first_name %}Hi {{ contact.first_name }}{% else %}Hello{% endif %}",
        "{{ contact.attributes.plan }} {{ contact.attributes.missing }}",
        "{{ campaign.name }} {{ contact.email }} {{ contact.language }}",
        "{% autoescape off %}{{ contact.first_name }}{% endautoescape %}",
        "{{ contact.attributes.city|urlencode }} {{ contact.email|urlencode }}",
        "{{ contact.first_name|urlencode }}/{{ contact.attributes.plan|urlencode }}",
        "You placed {{ contact.attributes.orders }} orders in {{ contact.attributes.city }}",
        '{{ contact.attributes.zero|default:"none" }} {{ contact.attributes.empty|default:"-" }}',
        "{{ contact.attributes.orders|urlencode }} {{ contact.attributes.plan }}",
        "{{ contact.attributes.member }} {{ contact.attributes.plan }}",  # a boolean
        "{{ contact.attributes.score }} {{ contact.attributes.tags }}",
        "{{ contact.attributes.missing|urlencode }} {{ contact.attributes.plan }}",
        "{{ contact.attributes.plan|urlencode:'' }} {{ contact.attributes.city|lower }}",
        # One value encoded twice and shown once as it is (encoded once a message).
        "{{ contact.attributes.city|urlencode }} {{ contact.attributes.city }} "
        "{{ contact.attributes.city|urlencode }} {{ contact.email|urlencode }}",
    ],
)
@pytest.mark.parametrize("first_name", ["", "<Ann & Bob>"])
def test_template_logic_renders_as_django_renders_it(body: str, first_name: str) -> None:
    template = Template(
        name="Logic", subject=body + " x", text_body=body, html_body=f"<p>{body}</p>"
    )

    assert_same_as_email_package(template, first_name=first_name, attributes=ATTRIBUTES)


def test_sender_reply_to_and_an_unusual_address_read_back_as_written() -> None:
    sender = dispatcher(from_name="Équipe «News», Paris", reply_to="Help Desk <help@example.org>")
    template = Template(name="News", **NEWSLETTER)

    _, shown = assert_same_as_email_package(
        template, sender, email='"ann lee"@example.net', first_name="Ann"
    )

    assert shown["To"] == [("Ann Lee", '"ann lee"@example.net')]
    assert shown["From"] == [("Équipe «News», Paris", "news@example.org")]


def test_the_unsubscribe_link_in_a_message_is_signed_for_its_item() -> None:
    template = Template(name="News", **NEWSLETTER)
    item, contact, campaign = cast(template)

    message = message_build(
        compiled=template_compile(template=template),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=dispatcher(),
        return_domain=RETURN_DOMAIN,
    )

    url = str(message["List-Unsubscribe"]).partition(",")[0].strip("<>")
    signed = url.rstrip("/").rpartition("/")[2]
    assert signing.loads(signed, salt=UNSUBSCRIBE_SALT) == "t0k3n"
    assert url in str(read(message_bytes(message))["plain"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", "Eve\r\nBcc: all@victim.test"),
        ("last_name", "Eve\nBcc: all@victim.test"),
        ("first_name", "Eve\u2028Bcc: all@victim.test"),
        ("first_name", "Eve\x00"),
    ],
)
def test_line_breaks_in_a_name_are_refused_not_sent(field: str, value: str) -> None:
    template = Template(name="News", **NEWSLETTER)
    item, contact, campaign = cast(template, **{field: value})

    with pytest.raises(MessageBuildError, match="Line breaks"):
        message_build(
            compiled=template_compile(template=template),
            item=item,
            contact=contact,
            campaign=campaign,
            dispatcher=dispatcher(),
            return_domain=RETURN_DOMAIN,
        )


def test_line_breaks_in_a_subject_or_the_sender_are_refused_not_sent() -> None:
    template = Template(name="News", **{**NEWSLETTER, "subject": "{{ contact.attributes.s }}"})
    item, contact, campaign = cast(template, attributes={"s": "Hi\r\nBcc: all@victim.test"})
    build = dict(compiled=template_compile(template=template), item=item, contact=contact)

    with pytest.raises(MessageBuildError, match="Line breaks"):
        message_build(
            **build, campaign=campaign, dispatcher=dispatcher(), return_domain=RETURN_DOMAIN
        )
    with pytest.raises(MessageBuildError, match="Line breaks"):
        message_build(
            **build,
            campaign=campaign,
            dispatcher=dispatcher(from_name="News\r\nBcc: all@victim.test"),
            return_domain=RETURN_DOMAIN,
        )


def test_one_skeleton_serves_a_whole_batch_each_message_its_own() -> None:
    template = Template(name="News", **NEWSLETTER)
    skeleton = message_skeleton(
        campaign=Campaign(pk=7, name="Spring news", template=template),
        dispatcher=dispatcher(),
        return_domain=RETURN_DOMAIN,
    )
    people = [("Ann", "ann@example.net", "a1"), ("Zoë", "zoe@example.net", "z2")]

    shown = []
    for first_name, address, token in people:
        contact = Contact(email=address, first_name=first_name, last_name="")
        item = CampaignItem(contact=contact, token=token)
        shown.append(
            read(message_bytes(message_render(skeleton=skeleton, item=item, contact=contact)))
        )

    assert [s["To"] for s in shown] == [[("Ann", "ann@example.net")], [("Zoë", "zoe@example.net")]]
    assert [s["Message-ID"] for s in shown] == ["<a1@example.org>", "<z2@example.org>"]
    assert "Dear Zoë," in str(shown[1]["plain"]) and "Ann" not in str(shown[1]["plain"])
