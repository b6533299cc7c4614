"""The SMTP server record and its admin form: every bad value gets a clear
error and nothing is saved."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from smtpservers.forms import SmtpServerForm
from smtpservers.models import SmtpServer

pytestmark = pytest.mark.django_db

ADD = reverse("admin:smtpservers_smtpserver_add")


def form_data(**overrides: str) -> dict[str, str]:
    data = {
        "name": "Office relay",
        "host": "smtp.example.org",
        "port": "587",
        "security": "starttls",
        "verify_certificate": "on",
        "ca_bundle": "",
        "timeout": "30",
        "helo_name": "",
        "is_active": "on",
        "auth_method": "clear",
        "username": "apikey",
        "password": "SG.secret",
        "password_confirm": "SG.secret",
        "oauth_provider": "",
    }
    return data | overrides


BAD_VALUES = [
    ("host", "", "Enter the server's host name or IP address."),
    ("host", "smtp://smtp.example.org", "not a URL"),
    ("host", "smtp.example.org:587", "Enter the port in the Port field, not after the host."),
    ("host", "smtp example.org", "The host must not contain spaces."),
    ("host", "smtp_.example.org", "This is not a valid host name."),
    ("port", "0", "greater than or equal to 1"),
    ("port", "65536", "less than or equal to 65535"),
    ("port", "smtp", "Enter a whole number."),
    ("timeout", "0", "greater than or equal to 1"),
    ("timeout", "301", "less than or equal to 300"),
    ("helo_name", "mail host", "must not contain spaces"),
    ("helo_name", "[999.1.1.1]", "An address literal must be an IP address in brackets"),
    ("helo_name", "-bad-.example", "Enter this machine's host name"),
    ("ca_bundle", "not a certificate", "Paste the CA certificates in PEM form"),
    (
        "ca_bundle",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "The CA bundle could not be read",
    ),
    ("security", "tls1.0", "Select a valid choice."),
    ("auth_method", "kerberos", "Select a valid choice."),
    ("username", "", "Enter the SMTP account name"),
    ("password_confirm", "SG.secreT", "The two passwords do not match."),
    ("oauth_provider", "gmail", "The mail server is only for OAuth 2.0"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES)
def test_the_admin_form_rejects_a_bad_value_and_saves_nothing(
    administrator_client: Client, key: str, field: str, value: str, message: str
) -> None:
    response = administrator_client.post(ADD, form_data(**{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert any(message in e for e in errors.get(field, [])), errors
    assert not SmtpServer.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"), [v for v in BAD_VALUES[:15] if v[1] != "smtp"]
)
def test_the_model_rejects_the_same_values(key: str, field: str, value: str, message: str) -> None:
    server = SmtpServer(name="Relay", host="smtp.example.org", security="starttls")
    setattr(
        server, field, int(value) if field in ("port", "timeout") and value.isdigit() else value
    )
    with pytest.raises(ValidationError) as excinfo:
        server.full_clean()
    assert any(message in e for e in excinfo.value.message_dict[field])


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"password": "", "password_confirm": ""}, "password", "Enter the password"),
        ({"auth_method": "ntlm", "password": "", "password_confirm": ""}, "password", "Enter"),
        ({"auth_method": "oauth2"}, "oauth_provider", "Choose the mail server"),
        (
            {"security": "none", "ca_bundle": "PEM"},
            "ca_bundle",
            "A CA bundle is only used with SSL or STARTTLS",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused(
    key: str, overrides: dict[str, str], field: str, message: str, pki: Any
) -> None:
    if overrides.get("ca_bundle") == "PEM":
        overrides = overrides | {"ca_bundle": pki.ca_pem}
    form = SmtpServerForm(data=form_data(**overrides))
    assert not form.is_valid()
    assert any(message in e for e in form.errors[field]), form.errors


def test_a_good_server_is_saved_with_its_ca_bundle(
    administrator_client: Client, key: str, pki: Any
) -> None:
    response = administrator_client.post(ADD, form_data(ca_bundle=pki.ca_pem))
    assert response.status_code == 302
    server = SmtpServer.objects.get()
    assert server.ca_bundle == pki.ca_pem.strip()
    assert server.password.reveal() == "SG.secret"
    assert server.username == "apikey"


def test_the_form_offers_the_port_reset_and_the_suggestions(administrator_client: Client) -> None:
    html = administrator_client.get(ADD).content.decode()
    assert 'data-default-port="25"' in html
    assert "smtpservers/server_form.js" in html
    assert '"ssl": 465' in html and '"starttls": 587' in html
    assert 'name="password_confirm"' in html


def test_the_verification_warning_shows_when_verification_is_off(
    administrator_client: Client, key: str
) -> None:
    server = SmtpServer.objects.create(
        name="Old box", host="smtp.example.org", security="ssl", verify_certificate=False
    )
    html = administrator_client.get(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    ).content.decode()
    warning = html[html.index('id="herald-verify-warning"') :][:200]
    assert "hidden" not in warning.split(">")[0]
    assert "Certificate verification is off" in warning
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
        form_data(
            name="Old box",
            security="ssl",
            verify_certificate="",
            auth_method="none",
            username="",
            password="",
            password_confirm="",
        ),
        follow=True,
    )
    assert "Certificate verification is off for “Old box”" in response.content.decode()
