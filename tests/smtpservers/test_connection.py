"""Test connection against real servers: each step's failure in plain words."""

from __future__ import annotations

from typing import Any

import pytest

from smtpservers.models import SmtpServer
from smtpservers.services import connection_test
from tests.smtp import free_port

from .servers import PASSWORD, USER, Pki, raw_server, smtp_server

pytestmark = pytest.mark.django_db

Auth = SmtpServer.AuthMethod
Sec = SmtpServer.Security


def test_a_plain_server_is_ok_with_its_banner_and_extensions(make_server: Any) -> None:
    with smtp_server() as (port, _):
        server = make_server(port, helo_name="mailer.example.org")
        report = connection_test(server=server)
    assert report.ok, report.message
    assert report.message.startswith("OK. Banner: ")
    assert "Python SMTP" in report.message
    assert "Extensions: " in report.message and "8BITMIME" in report.message


def test_the_helo_name_is_announced(make_server: Any) -> None:
    with smtp_server() as (port, handler):
        connection_test(server=make_server(port, helo_name="mailer.example.org"))
    assert handler.helo_names == ["mailer.example.org"]


@pytest.mark.parametrize("mode", [Sec.STARTTLS, Sec.SSL])
def test_tls_with_the_ca_bundle_is_ok(make_server: Any, pki: Pki, mode: str) -> None:
    with smtp_server(pki, mode=mode) as (port, _):
        report = connection_test(server=make_server(port, security=mode, ca_bundle=pki.ca_pem))
    assert report.ok, report.message
    assert ("STARTTLS" if mode == Sec.STARTTLS else "implicit TLS") in report.message


@pytest.mark.parametrize("mode", [Sec.STARTTLS, Sec.SSL])
def test_a_self_signed_certificate_is_refused(make_server: Any, pki: Pki, mode: str) -> None:
    with smtp_server(pki, mode=mode, rogue=True) as (port, _):
        server = make_server(port, security=mode, ca_bundle=pki.ca_pem)
        report = connection_test(server=server)
    assert not report.ok
    assert "Certificate not trusted: self-signed certificate" in report.message
    step = "TLS" if mode == Sec.STARTTLS else "connect"
    assert report.message.startswith(f"Failed at {step}: ")


def test_a_private_ca_is_not_trusted_without_its_bundle(make_server: Any, pki: Pki) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS) as (port, _):
        report = connection_test(server=make_server(port, security=Sec.STARTTLS))
    assert not report.ok
    assert "Certificate not trusted: unable to get local issuer certificate" in report.message


def test_without_verification_the_self_signed_certificate_is_accepted(
    make_server: Any, pki: Pki
) -> None:
    with smtp_server(pki, mode=Sec.SSL, rogue=True) as (port, _):
        server = make_server(port, security=Sec.SSL, verify_certificate=False)
        report = connection_test(server=server)
    assert report.ok, report.message


def test_starttls_not_offered(make_server: Any) -> None:
    with smtp_server() as (port, _):
        report = connection_test(server=make_server(port, security=Sec.STARTTLS))
    assert not report.ok
    assert "Failed at TLS: TLS not offered: the server does not announce STARTTLS" in (
        report.message
    )


def clear_text(port: int, make_server: Any, pki: Pki, password: str = PASSWORD) -> SmtpServer:
    return make_server(
        port,
        security=Sec.STARTTLS,
        ca_bundle=pki.ca_pem,
        auth_method=Auth.CLEAR_TEXT,
        username=USER,
        password=password,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_clear_text_login_uses_what_the_server_offers(
    make_server: Any, pki: Pki, mechanism: str
) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS, mechanisms=(mechanism,)) as (port, _):
        report = connection_test(server=clear_text(port, make_server, pki))
    assert report.ok, report.message
    assert f"logged in with AUTH {mechanism}" in report.message


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_wrong_password_is_rejected_with_the_servers_reply(
    make_server: Any, pki: Pki, mechanism: str
) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS, mechanisms=(mechanism,)) as (port, _):
        report = connection_test(server=clear_text(port, make_server, pki, "wrong"))
    assert not report.ok
    assert report.message == (
        "Failed at AUTH: Authentication rejected: 535 5.7.8 Authentication credentials invalid"
    )


def test_clear_text_without_plain_or_login_is_explained(make_server: Any, pki: Pki) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS, mechanisms=("XOAUTH2",)) as (port, _):
        report = connection_test(server=clear_text(port, make_server, pki))
    assert not report.ok
    assert "does not offer clear-text login (AUTH PLAIN or LOGIN); it offers AUTH XOAUTH2" in (
        report.message
    )


def test_credentials_never_cross_an_unencrypted_connection_unless_allowed(
    make_server: Any,
) -> None:
    with smtp_server(auth_require_tls=False) as (port, handler):
        server = make_server(port, auth_method=Auth.CLEAR_TEXT, username=USER, password=PASSWORD)
        refused = connection_test(server=server)
        assert handler.helo_names == []  # not even connected
        server.allow_insecure_auth = True
        allowed = connection_test(server=server)
    assert not refused.ok
    assert "Refused to send the credentials over an unencrypted connection" in refused.message
    assert allowed.ok, allowed.message
    assert "logged in with AUTH PLAIN" in allowed.message


def test_a_421_greeting(make_server: Any) -> None:
    with raw_server(b"421 4.3.2 mx.example.org Too many connections, try later\r\n") as port:
        report = connection_test(server=make_server(port))
    assert not report.ok
    assert report.message == (
        "Failed at greeting: The server refused the session in its greeting: "
        "421 4.3.2 mx.example.org Too many connections, try later"
    )


def test_a_server_that_never_answers_times_out(make_server: Any) -> None:
    with raw_server(None) as port:
        report = connection_test(server=make_server(port, timeout=1))
    assert not report.ok
    assert report.message == (
        f"Failed at connect: Timed out: no answer from 127.0.0.1:{port} within 1 seconds "
        "(waiting for its greeting)."
    )


def test_a_server_that_hangs_up_after_ehlo(make_server: Any) -> None:
    with smtp_server(hang_up_after_ehlo=True, auth_require_tls=False) as (port, _):
        server = make_server(
            port,
            auth_method=Auth.CLEAR_TEXT,
            username=USER,
            password=PASSWORD,
            allow_insecure_auth=True,
        )
        report = connection_test(server=server)
    assert not report.ok
    assert report.message.startswith("Failed at AUTH: The server closed the connection during AUTH")


def test_a_name_that_does_not_resolve(make_server: Any) -> None:
    server = make_server(25)
    server.host = "mail.herald-test.invalid"
    report = connection_test(server=server)
    assert not report.ok
    assert report.message.startswith(
        "Failed at connect: Name not found: “mail.herald-test.invalid” does not resolve"
    )


def test_connection_refused(make_server: Any) -> None:
    port = free_port()
    report = connection_test(server=make_server(port))
    assert report.message == (
        f"Failed at connect: Connection refused: nothing accepts connections on 127.0.0.1:{port}."
    )


def test_the_outcome_is_stored_on_the_server(make_server: Any) -> None:
    port = free_port()
    server = make_server(port)
    connection_test(server=server)
    server.refresh_from_db()
    assert server.connection_ok is False
    assert server.connection_status.startswith("Failed at connect: Connection refused")
    assert server.connection_checked_at is not None
    with smtp_server() as (server.port, _):
        server.save()
        connection_test(server=server)
    server.refresh_from_db()
    assert server.connection_ok is True
    assert server.connection_status.startswith("OK. Banner:")
