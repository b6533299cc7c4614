"""The SMS dispatcher form: the Twilio account, who sends, the auth token
stored encrypted and never shown, and a clear error for each bad value."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from dispatchers.models import Dispatcher

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:dispatchers_dispatcher_add")
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "9f8e7d6c5b4a3921" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2


def sms_form(**changes: str) -> dict[str, str]:
    data = {
        "name": "Text alerts",
        "server_name": "mailer1",
        "type": "SMS",
        "is_enabled": "on",
        "messages_per_hour": "3600",
        "batch_size": "100",
        "pacing": "spread",
        "connections": "1",
        "delivery_mode": "smtp",
        "smtp_server": "",
        "pickup_directory": "",
        "from_email": "",
        "from_name": "",
        "reply_to": "",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "sms_from_number": "+14155550199",
        "twilio_messaging_service_sid": "",
    }
    data.update(changes)
    return data


def test_an_sms_dispatcher_is_saved_with_its_token_encrypted_and_never_shown(
    administrator_client: Client,
) -> None:
    response = administrator_client.post(ADD_URL, sms_form(), follow=True)

    assert response.status_code == 200
    dispatcher = Dispatcher.objects.get(name="Text alerts")
    assert dispatcher.twilio_auth_token.reveal() == AUTH_TOKEN
    with connection.cursor() as cur:
        cur.execute(
            "SELECT twilio_auth_token FROM dispatchers_dispatcher WHERE id = %s", [dispatcher.pk]
        )
        assert AUTH_TOKEN not in cur.fetchone()[0]
    page = administrator_client.get(
        reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    ).content.decode()
    assert AUTH_TOKEN not in page
    assert f"/sms/status/{dispatcher.pk}/" in page  # the callback URL Twilio reports to
    assert 'class="module aligned herald-sms"' in page  # shown for SMS by the form script


def test_leaving_the_token_blank_keeps_the_stored_one(administrator_client: Client) -> None:
    administrator_client.post(ADD_URL, sms_form())
    dispatcher = Dispatcher.objects.get(name="Text alerts")
    change_url = reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])

    administrator_client.post(change_url, sms_form(twilio_auth_token="", batch_size="10"))

    dispatcher.refresh_from_db()
    assert (dispatcher.batch_size, dispatcher.twilio_auth_token.reveal()) == (10, AUTH_TOKEN)


def test_a_messaging_service_may_stand_in_for_the_from_number(administrator_client: Client) -> None:
    administrator_client.post(
        ADD_URL, sms_form(sms_from_number="", twilio_messaging_service_sid=SERVICE_SID)
    )

    assert Dispatcher.objects.get(name="Text alerts").twilio_messaging_service_sid == SERVICE_SID


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"sms_from_number": "", "twilio_messaging_service_sid": ""},
            "Give a from number or a messaging service SID: Twilio needs one of them "
            "to know who sends.",
        ),
        ({"twilio_account_sid": ""}, "An SMS dispatcher needs the Twilio account SID."),
        ({"twilio_auth_token": ""}, "An SMS dispatcher needs the Twilio auth token."),
        (
            {"twilio_account_sid": "AC123"},
            "A Twilio account SID is AC followed by 32 hexadecimal characters",
        ),
        (
            {"twilio_account_sid": "MG" + "0" * 32},
            "A Twilio account SID is AC followed by 32 hexadecimal characters",
        ),
        (
            {"twilio_auth_token": "secret"},
            "A Twilio auth token is 32 hexadecimal characters",
        ),
        (
            {"twilio_messaging_service_sid": "MGxyz"},
            "A messaging service SID is MG followed by 32 hexadecimal characters",
        ),
        (
            {"sms_from_number": "+1 415 555 0199"},
            "Write the from number in E.164 form: + country code and number, no spaces",
        ),
        (
            {"sms_from_number": "+99912"},
            "Write the from number in E.164 form: + country code and number, no spaces",
        ),
        (
            {"sms_from_number": "Herald News!"},
            "Enter a Twilio phone number in E.164 form (+14155550100)",
        ),
        (
            {"sms_from_number": "415\r\nBcc: x"},
            "Enter a Twilio phone number in E.164 form (+14155550100)",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_nothing_saved(
    administrator_client: Client, changes: dict[str, str], error: str
) -> None:
    response = administrator_client.post(ADD_URL, sms_form(**changes))

    assert response.status_code == 200
    assert error in response.content.decode().replace("&#x27;", "'")
    assert not Dispatcher.objects.filter(name="Text alerts").exists()


def test_an_email_dispatcher_needs_no_twilio_account(administrator_client: Client) -> None:
    from smtpservers.models import SmtpServer

    server = SmtpServer.objects.create(name="Relay", host="127.0.0.1", port=2525, timeout=5)
    administrator_client.post(
        ADD_URL,
        sms_form(
            type="EMAIL",
            smtp_server=str(server.pk),
            from_email="news@example.org",
            twilio_account_sid="",
            twilio_auth_token="",
            sms_from_number="",
        ),
    )

    assert Dispatcher.objects.get(name="Text alerts").type == Dispatcher.Type.EMAIL
