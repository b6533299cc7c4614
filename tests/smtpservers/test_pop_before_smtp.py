"""POP-before-SMTP against a protocol-complete POP3 server (the bounce
tests' one): a login before each sending session and in Test connection,
its failures reported as their own step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from dispatchers.transports import ConnectionLost, Outcome
from smtpservers.models import SmtpServer
from smtpservers.services import connection_test
from tests.bounces.pop3 import Maildrop, Pop3Server
from tests.smtp import free_port

from .servers import Pki, smtp_server
from .test_server_form import form_data
from .test_transport_auth import send

pytestmark = pytest.mark.django_db


@pytest.fixture
def maildrop() -> Maildrop:
    return Maildrop(user="relay-user", password="pop-Pass-1")


@pytest.fixture
def pop3(maildrop: Maildrop) -> Iterator[Pop3Server]:
    server = Pop3Server(maildrop).start()
    yield server
    server.stop()


@pytest.fixture
def pop3_stls(maildrop: Maildrop, pki: Pki) -> Iterator[Pop3Server]:
    server = Pop3Server(maildrop, tls_context=pki.server_context()).start()
    yield server
    server.stop()


@pytest.fixture
def pop3_ssl(maildrop: Maildrop, pki: Pki) -> Iterator[Pop3Server]:
    server = Pop3Server(maildrop, tls_context=pki.server_context(), implicit_tls=True).start()
    yield server
    server.stop()


def with_pop(make_server: Any, smtp_port: int, pop_port: int, **fields: Any) -> SmtpServer:
    fields = {
        "pop_before_smtp": True,
        "pop_host": "127.0.0.1",
        "pop_port": pop_port,
        "pop_username": "relay-user",
        "pop_password": "pop-Pass-1",
        "allow_insecure_auth": True,  # the plain POP3 server; SSL is tested below
        **fields,
    }
    return make_server(smtp_port, **fields)


def test_test_connection_logs_in_to_pop3_first(make_server: Any, pop3: Pop3Server) -> None:
    with smtp_server() as (port, handler):
        report = connection_test(server=with_pop(make_server, port, pop3.port))
    assert report.ok, report.message
    assert report.message.startswith("OK, POP-before-SMTP login OK. Banner: ")
    assert pop3.log == ["USER", "PASS ***", "QUIT"]
    assert len(handler.helo_names) == 1


def test_a_wrong_pop3_password_is_its_own_step_and_smtp_is_not_tried(
    make_server: Any, pop3: Pop3Server
) -> None:
    with smtp_server() as (port, handler):
        server = with_pop(make_server, port, pop3.port, pop_password="wrong")
        report = connection_test(server=server)
    assert report.message == (
        "Failed at POP-before-SMTP: POP3 login rejected: -ERR [AUTH] Invalid login"
    )
    assert handler.helo_names == []
    server.refresh_from_db()
    assert server.connection_ok is False


def test_nothing_listening_on_the_pop3_port_is_a_refused_connection(make_server: Any) -> None:
    pop_port = free_port()
    with smtp_server() as (port, _):
        report = connection_test(server=with_pop(make_server, port, pop_port))
    assert report.message == (
        "Failed at POP-before-SMTP: Connection refused: nothing accepts POP3 connections on "
        f"127.0.0.1:{pop_port}."
    )


def test_an_unknown_pop3_host_is_name_not_found(make_server: Any) -> None:
    with smtp_server() as (port, _):
        server = with_pop(make_server, port, 110, pop_host="pop.invalid")
        report = connection_test(server=server)
    assert report.message.startswith(
        "Failed at POP-before-SMTP: Name not found: the POP3 host “pop.invalid” does not resolve"
    )


def test_pop3_over_ssl_is_verified_with_the_servers_ca_bundle(
    make_server: Any, pop3_ssl: Pop3Server, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl") as (port, _):
        server = with_pop(
            make_server,
            port,
            pop3_ssl.port,
            security=SmtpServer.Security.SSL,
            ca_bundle=pki.ca_pem,
            pop_security=SmtpServer.Security.SSL,
            allow_insecure_auth=False,
        )
        assert connection_test(server=server).ok
        server.ca_bundle = ""  # the system's CAs do not know the test CA
        report = connection_test(server=server)
    assert report.message.startswith(
        "Failed at POP-before-SMTP: POP3 server: Certificate not trusted: unable to get "
        "local issuer certificate."
    )


def test_the_pop3_password_is_not_sent_unencrypted_unless_allowed(
    make_server: Any, pop3: Pop3Server
) -> None:
    with smtp_server() as (port, handler):
        server = with_pop(make_server, port, pop3.port, allow_insecure_auth=False)
        report = connection_test(server=server)
    assert report.message.startswith(
        "Failed at POP-before-SMTP: Refused to send the POP3 password over an unencrypted "
        "connection."
    )
    assert pop3.log == [] and handler.helo_names == []


def test_every_sending_session_logs_in_to_pop3_first(make_server: Any, pop3: Pop3Server) -> None:
    with smtp_server() as (port, handler):
        server = with_pop(make_server, port, pop3.port)
        assert send(server).outcome is Outcome.ACCEPTED
        assert send(server).outcome is Outcome.ACCEPTED
    assert pop3.log.count("PASS ***") == 2
    assert len(handler.received) == 2


def test_a_send_whose_pop3_login_fails_sends_nothing(make_server: Any, pop3: Pop3Server) -> None:
    with smtp_server() as (port, handler):
        server = with_pop(make_server, port, pop3.port, pop_password="wrong")
        with pytest.raises(ConnectionLost, match="POP3 login rejected") as excinfo:
            send(server)
    assert excinfo.value.retry_pointless
    assert handler.received == []


# --- the form -------------------------------------------------------------------------


def pop_form(**overrides: str) -> dict[str, str]:
    pop = {
        "pop_before_smtp": "on",
        "pop_host": "pop.example.org",
        "pop_port": "995",
        "pop_security": "ssl",
        "pop_username": "relay-user",
        "pop_password": "pop-Pass-1",
    }
    return form_data(**(pop | overrides))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("pop_host", "", "Enter the POP3 host; POP before SMTP needs one."),
        ("pop_host", "pop3://pop.example.org", "not a URL"),
        ("pop_host", "pop.example.org:995", "Enter the port in the Port field"),
        ("pop_port", "0", "Ensure this value is greater than or equal to 1."),
        ("pop_port", "70000", "Ensure this value is less than or equal to 65535."),
        ("pop_port", "pop", "Enter a whole number."),
        ("pop_username", "", "Enter the POP3 account name; POP before SMTP needs one."),
        ("pop_username", "a\r\nBcc: x", "Line breaks and control characters"),
        ("pop_password", "", "Enter the POP3 password; POP before SMTP needs one."),
    ],
)
def test_bad_pop_settings_are_refused_and_nothing_saved(
    administrator_client: Client, key: str, field: str, value: str, error: str
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_add"), pop_form(**{field: value})
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not SmtpServer.objects.exists()


def test_the_pop3_password_is_write_only_and_encrypted(
    administrator_client: Client, key: str
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_add"), pop_form(pop_port="")
    )
    assert response.status_code == 302
    server = SmtpServer.objects.get()
    assert (server.pop_port, server.pop_password.reveal()) == (995, "pop-Pass-1")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pop_password FROM smtpservers_smtpserver")
        assert "pop-Pass-1" not in cursor.fetchone()[0]
    change = reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    assert "pop-Pass-1" not in administrator_client.get(change).content.decode()


# --- POP3 STARTTLS (STLS) -------------------------------------------------------------


def stls_server(make_server: Any, smtp_port: int, pop_port: int, pki: Pki, **fields: Any) -> Any:
    fields = {
        "pop_security": SmtpServer.Security.STARTTLS,
        "ca_bundle": pki.ca_pem,
        "security": SmtpServer.Security.SSL,
        "allow_insecure_auth": False,
        **fields,
    }
    return with_pop(make_server, smtp_port, pop_port, **fields)


def test_pop3_stls_upgrades_before_the_password_goes_out(
    make_server: Any, pop3_stls: Pop3Server, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl") as (port, handler):
        report = connection_test(server=stls_server(make_server, port, pop3_stls.port, pki))
    assert report.ok, report.message
    assert report.message.startswith("OK, implicit TLS, POP-before-SMTP login OK.")
    assert pop3_stls.log == ["CAPA", "STLS", "USER", "PASS ***", "QUIT"]
    assert len(handler.helo_names) == 1


def test_every_sending_session_logs_in_over_pop3_stls_first(
    make_server: Any, pop3_stls: Pop3Server, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl") as (port, handler):
        server = stls_server(make_server, port, pop3_stls.port, pki)
        assert send(server).outcome is Outcome.ACCEPTED
        assert send(server).outcome is Outcome.ACCEPTED
    assert pop3_stls.log.count("STLS") == 2
    assert len(handler.received) == 2


def test_a_pop3_server_without_stls_is_refused_before_the_password(
    make_server: Any, pop3: Pop3Server, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl") as (port, handler):
        report = connection_test(server=stls_server(make_server, port, pop3.port, pki))
    assert report.message == (
        f"Failed at POP-before-SMTP: TLS not offered: the POP3 server 127.0.0.1:{pop3.port} "
        "does not announce STLS. Choose SSL if this port speaks implicit TLS (usually 995), "
        "or ask the mail administrator."
    )
    assert "PASS ***" not in pop3.log and "USER" not in pop3.log
    assert handler.helo_names == []


def test_pop3_stls_verifies_the_certificate(
    make_server: Any, pop3_stls: Pop3Server, pki: Pki
) -> None:
    with smtp_server(pki, mode="ssl") as (port, handler):
        server = stls_server(make_server, port, pop3_stls.port, pki, ca_bundle="")
        report = connection_test(server=server)
    assert report.message.startswith(
        "Failed at POP-before-SMTP: POP3 server: Certificate not trusted: unable to get "
        "local issuer certificate."
    )
    assert "PASS ***" not in pop3_stls.log
    assert handler.helo_names == []


def test_the_form_takes_stls_with_the_plain_port_by_default(
    administrator_client: Client, key: str
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_add"),
        pop_form(pop_security="starttls", pop_port=""),
    )
    assert response.status_code == 302
    server = SmtpServer.objects.get()
    assert (server.pop_security, server.pop_port) == ("starttls", 110)


def test_an_unknown_pop3_encryption_is_refused(administrator_client: Client, key: str) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_add"), pop_form(pop_security="tls1.0")
    )
    assert response.status_code == 200
    assert "Select a valid choice." in response.content.decode()
    assert not SmtpServer.objects.exists()
