"""Preview of a template for a chosen contact (HTML sandboxed, text, SMS
with its segment count) and the test send to a few addresses."""

from __future__ import annotations

import html
import re
from email.utils import parseaddr
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from campaigns.models import Campaign, Contact, Template
from campaigns.preview import template_test_send
from campaigns.sms import sms_segments
from smtpservers.services import personal_server_set
from tests.campaigns.cast import login_as
from tests.helpers import make_campaign, make_dispatcher, make_smtp_server, make_template
from tests.smtp import SmtpSink

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def template() -> Template:
    return make_template(
        subject="Hello {{ contact.first_name|default:'there' }}",
        html_body="<p>Dear {{ contact.first_name }}</p><script>document.title='pwned'</script>",
        sms_body="Hi {{ contact.first_name }}, 20% off today",
    )


@pytest.fixture
def ada() -> Contact:
    return Contact.objects.create(email="ada@example.org", first_name="Ada", last_name="Lovelace")


def page(client: Client, template: Template, **query: Any) -> Any:
    return client.get(reverse("campaigns:template_preview", args=[template.pk]), query)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("GSM-7", 0)),
        ("a" * 160, ("GSM-7", 1)),
        ("a" * 161, ("GSM-7", 2)),
        ("a" * 306, ("GSM-7", 2)),
        ("a" * 307, ("GSM-7", 3)),
        ("€" * 80, ("GSM-7", 1)),  # two septets each: 160
        ("€" * 81, ("GSM-7", 2)),
        # An escape pair is never split across parts: 152 + 77 pairs take 3.
        ("a" * 152 + "€" * 77, ("GSM-7", 3)),
        ("ж" * 70, ("UCS-2", 1)),
        ("ж" * 71, ("UCS-2", 2)),
        ("ж" * 134, ("UCS-2", 2)),
        ("ж" * 135, ("UCS-2", 3)),
        ("😀" * 35, ("UCS-2", 1)),  # two UTF-16 units each: 70
        ("😀" * 36, ("UCS-2", 2)),
        ("Prix: 10€ {ok}", ("GSM-7", 1)),
        ("a" * 159 + "ж", ("UCS-2", 3)),  # one non-GSM character turns it all UCS-2
    ],
)
def test_sms_segments(text: str, expected: tuple[str, int]) -> None:
    assert sms_segments(text) == expected


def test_the_preview_is_personalised_for_a_contact_picked_by_search(
    client: Client, template: Template, ada: Contact
) -> None:
    Contact.objects.create(email="adam@example.org", first_name="Adam")
    Contact.objects.create(email="zoe@example.org", first_name="Zoe")
    login_as(client, MARKETER)

    found = page(client, template, q="ADA").content.decode()
    assert re.findall(r'contact=\d+&amp;tab=html">([^<]+)</a>', found) == [
        "ada@example.org",
        "adam@example.org",
    ]
    picked = page(client, template, contact=ada.pk).content.decode()
    assert 'data-preview="subject">Hello Ada<' in picked
    assert "ada@example.org (Ada Lovelace)" in picked
    sample = page(client, template).content.decode()
    assert 'data-preview="subject">Hello Jane<' in sample  # before anyone is picked


def test_the_html_is_shown_in_a_sandboxed_frame_where_no_script_may_run(
    client: Client, template: Template, ada: Contact
) -> None:
    login_as(client, MARKETER)

    response = page(client, template, contact=ada.pk)

    body = response.content.decode()
    frame = re.search(r"<iframe [^>]*>", body)
    assert frame
    assert ' sandbox="" ' in frame.group(0)  # no scripts, no same origin, no forms
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', frame.group(0)).group(1))
    assert "<p>Dear Ada</p>" in srcdoc
    assert srcdoc.startswith(
        '<meta http-equiv="Content-Security-Policy" content="script-src \'none\''
    )
    assert "<script>document.title" not in body  # only escaped, inside the attribute
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


def test_the_text_and_sms_tabs(client: Client, template: Template, ada: Contact) -> None:
    login_as(client, MARKETER)

    text = page(client, template, contact=ada.pk, tab="text").content.decode()
    assert "Dear Ada Lovelace," in text

    sms = page(client, template, contact=ada.pk, tab="sms").content.decode()
    assert "Hi Ada, 20% off today" in sms
    assert 'data-preview="sms-count">21 characters, GSM-7, 1 segment<' in sms


def test_a_test_send_reaches_each_address_personalised_for_the_contact(
    client: Client, template: Template, ada: Contact
) -> None:
    with SmtpSink(rcpt_rule=lambda a: "550 5.1.1 No such user" if "nobody" in a else None) as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        login_as(client, MARKETER)

        response = client.post(
            reverse("campaigns:template_preview", args=[template.pk]) + f"?contact={ada.pk}",
            {
                "recipients": "me@example.com,\r\nboss@example.com; nobody@example.com",
                "dispatcher": dispatcher.pk,
                "contact": ada.pk,
            },
        )

    assert response.status_code == 200
    rows = re.findall(
        r"<tr><td>([^<]+)</td><td><span [^>]*>([^<]+)</span></td><td>([^<]*)</td></tr>",
        response.content.decode(),
    )
    assert [r[:2] for r in rows] == [
        ("me@example.com", "Sent"),
        ("boss@example.com", "Sent"),
        ("nobody@example.com", "Not sent"),
    ]
    assert "550" in rows[2][2] and "No such user" in rows[2][2]
    got = {r.recipients[0]: r.message for r in sink.received}
    assert set(got) == {"me@example.com", "boss@example.com"}
    assert parseaddr(got["me@example.com"]["To"])[1] == "me@example.com"
    assert got["me@example.com"]["Subject"] == "Hello Ada"
    assert Campaign.objects.count() == 0  # a test send stores nothing


def test_a_test_send_goes_through_the_users_personal_server_when_chosen(
    client: Client, template: Template, ada: Contact, django_user_model: Any
) -> None:
    with SmtpSink() as relay, SmtpSink() as mine:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=relay.port))
        personal = make_smtp_server(port=mine.port, personal_use=True)
        login_as(client, MARKETER)
        personal_server_set(user=django_user_model.objects.get(), server=personal)

        client.post(
            reverse("campaigns:template_preview", args=[template.pk]) + f"?contact={ada.pk}",
            {"recipients": "me@example.com", "dispatcher": dispatcher.pk, "contact": ada.pk},
        )

    assert [r.recipients for r in mine.received] == [["me@example.com"]]
    assert relay.received == []


@pytest.mark.parametrize(
    ("recipients", "error"),
    [
        ([f"t{i}@example.com" for i in range(11)], "At most 10 addresses"),
        (["me@example.com\r\nBcc: victim@example.org"], "line breaks are not allowed"),
        (["me@example.com", "not an address"], "not an address"),
        ([" ", ""], "Enter at least one address"),
    ],
)
def test_a_bad_test_send_is_refused_and_sends_nothing(
    template: Template, ada: Contact, django_user_model: Any, recipients: list[str], error: str
) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        with pytest.raises(ValidationError) as refused:
            template_test_send(
                template=template,
                contact=ada,
                dispatcher=dispatcher,
                recipients=recipients,
                user=django_user_model.objects.create_user("m"),
            )
    assert error in " ".join(refused.value.messages)
    assert sink.received == []


def test_the_page_refuses_eleven_addresses_with_the_reason(
    client: Client, template: Template
) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        login_as(client, MARKETER)
        response = client.post(
            reverse("campaigns:template_preview", args=[template.pk]),
            {
                "recipients": "\n".join(f"t{i}@example.com" for i in range(11)),
                "dispatcher": dispatcher.pk,
            },
        )
    assert response.status_code == 400
    assert "At most 10 addresses per test send (11 given)." in response.content.decode()
    assert sink.received == []


def test_a_campaign_preview_sends_only_through_the_campaigns_dispatcher(
    client: Client, template: Template
) -> None:
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[], template=template)
    other = make_dispatcher()
    login_as(client, ADMINISTRATOR)
    url = reverse("campaigns:campaign_preview", args=[campaign.pk])

    assert client.get(url).status_code == 200
    response = client.post(url, {"recipients": "me@example.com", "dispatcher": other.pk})

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()


def test_an_operator_may_not_preview_templates(client: Client, template: Template) -> None:
    login_as(client, OPERATOR)
    assert page(client, template).status_code == 403
