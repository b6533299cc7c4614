"""The dispatcher form for direct delivery, email service APIs and file
backup: each bad value gets a clear error on its field and nothing is
saved; good values are saved, the API key encrypted and never shown."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from dispatchers.models import Dispatcher
from smtpservers.encryption import reveal

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:dispatchers_dispatcher_add")


def add_form(**changes: str) -> dict[str, str]:
    data = {
        "name": "Announcements",
        "server_name": "mailer1",
        "type": "EMAIL",
        "is_enabled": "on",
        "messages_per_hour": "600",
        "batch_size": "50",
        "pacing": "spread",
        "connections": "1",
        "delivery_mode": "direct",
        "smtp_server": "",
        "helo_name": "mail.example.org",
        "pickup_directory": "",
        "esp_provider": "",
        "esp_api_key": "",
        "esp_api_url": "",
        "backup_directory": "",
        "from_email": "news@example.org",
        "from_name": "Example News",
        "reply_to": "",
    }
    data.update(changes)
    return data


def refused(client: Client, field: str, message: str, **changes: str) -> None:
    response = client.post(ADD_URL, add_form(**changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Dispatcher.objects.exists()


# --- direct delivery ---------------------------------------------------------


def test_direct_delivery_is_saved_with_its_helo_name_and_warns_about_the_ptr_record(
    administrator_client: Client,
) -> None:
    response = administrator_client.post(ADD_URL, add_form(), follow=True)

    dispatcher = Dispatcher.objects.get(name="Announcements")
    assert dispatcher.delivery_mode == Dispatcher.DeliveryMode.DIRECT
    assert dispatcher.helo_name == "mail.example.org"
    assert "static IP address whose PTR (reverse DNS) record is mail.example.org" in (
        response.content.decode()
    )


def test_the_form_warns_before_saving_that_direct_delivery_needs_a_ptr_record(
    administrator_client: Client,
) -> None:
    page = administrator_client.get(ADD_URL).content.decode()
    assert "Direct delivery needs a static IP address whose PTR" in page


@pytest.mark.parametrize(
    ("helo", "message"),
    [
        ("", "full host name"),
        ("mailer1", "full host name"),
        ("[192.0.2.1]", "full host name"),
        ("mail example.org", "must not contain spaces"),
        ("mail.example.org\r\nX: y", "Line breaks"),
        ("-bad-.example.org", "host name"),
    ],
)
def test_direct_delivery_refuses_a_bad_helo_name(
    administrator_client: Client, helo: str, message: str
) -> None:
    refused(administrator_client, "helo_name", message, helo_name=helo)


# --- email service API ---------------------------------------------------------


def api_form(**changes: str) -> dict[str, str]:
    fields = {
        "delivery_mode": "api",
        "helo_name": "",
        "esp_provider": "postmark",
        "esp_api_key": "pm-server-token",
        "esp_api_url": "",
    }
    fields.update(changes)
    return fields


def test_an_api_dispatcher_keeps_its_key_encrypted_and_never_shows_it(
    administrator_client: Client,
) -> None:
    administrator_client.post(ADD_URL, add_form(**api_form(esp_api_url="https://pm.example/")))

    dispatcher = Dispatcher.objects.get(name="Announcements")
    assert reveal(dispatcher.esp_api_key) == "pm-server-token"
    with connection.cursor() as cursor:
        cursor.execute("SELECT esp_api_key FROM dispatchers_dispatcher")
        (stored,) = cursor.fetchone()
    assert "pm-server-token" not in stored
    change_url = reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    page = administrator_client.get(change_url).content.decode()
    assert "pm-server-token" not in page

    # Saving again with the key left blank keeps it.
    administrator_client.post(change_url, add_form(**api_form(esp_api_key="")))
    dispatcher.refresh_from_db()
    assert reveal(dispatcher.esp_api_key) == "pm-server-token"


def test_the_provider_name_is_shown_in_the_list(administrator_client: Client) -> None:
    administrator_client.post(ADD_URL, add_form(**api_form(esp_provider="mailgun")))

    page = administrator_client.get(reverse("admin:dispatchers_dispatcher_changelist"))
    assert "Email service API (Mailgun)" in page.content.decode()


@pytest.mark.parametrize(
    ("field", "changes", "message"),
    [
        ("esp_provider", {"esp_provider": ""}, "Choose the email service"),
        ("esp_provider", {"esp_provider": "pigeon"}, "not one of the available choices"),
        ("esp_api_key", {"esp_api_key": ""}, "Enter the Postmark API key"),
        ("esp_api_key", {"esp_api_key": "pm token"}, "no spaces, line breaks"),
        ("esp_api_key", {"esp_api_key": "pm\r\nX-Evil: 1"}, "no spaces, line breaks"),
        (
            "esp_api_key",
            {"esp_provider": "amazon_ses", "esp_api_key": "AKIAONLY"},
            "access key ID:secret access key",
        ),
        ("esp_api_key", {"esp_provider": "mailjet", "esp_api_key": "k:"}, "API key:secret key"),
        ("esp_api_url", {"esp_provider": "postal"}, "Postal needs the URL of its API"),
        ("esp_api_url", {"esp_api_url": "http://api.postmarkapp.com/"}, "Use https"),
        ("esp_api_url", {"esp_api_url": "ftp://api.example/"}, "full URL"),
        ("esp_api_url", {"esp_api_url": "api.postmarkapp.com"}, "full URL"),
        ("esp_api_url", {"esp_api_url": "https://u:p@api.example/"}, "credentials"),
        ("esp_api_url", {"esp_api_url": "https://api.example/\r\nX: y"}, "Line breaks"),
    ],
)
def test_bad_api_settings_are_refused(
    administrator_client: Client, field: str, changes: dict[str, str], message: str
) -> None:
    refused(administrator_client, field, message, **api_form(**changes))
