"""SmtpTransport with every authentication type, against real servers."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from dispatchers.transports import ConnectionLost, Outcome
from dispatchers.transports.smtp import SmtpTransport
from smtpservers.models import SmtpServer
from tests.smtp import free_port

from .servers import ACCESS_TOKEN, PASSWORD, USER, Pki, ntlm_user_file, smtp_server

pytestmark = pytest.mark.django_db

Auth = SmtpServer.AuthMethod
Sec = SmtpServer.Security


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "news@example.org", "ann@example.net", "Hello"
    msg.set_content("Hi Ann")
    return msg


def send(server: SmtpServer) -> Any:
    with SmtpTransport(server=server) as transport:
        return transport.send(message(), sender="b@example.org", recipient="ann@example.net")


@pytest.fixture
def ntlm_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTLM_USER_FILE", str(ntlm_user_file(tmp_path)))


def ntlm_server(port: int, make_server: Any, pki: Pki, password: str) -> SmtpServer:
    return make_server(
        port,
        security=Sec.STARTTLS,
        ca_bundle=pki.ca_pem,
        auth_method=Auth.NTLM,
        username="EXAMPLE\\herald",
        password=password,
    )


def test_ntlm_sends_after_a_real_handshake(make_server: Any, pki: Pki, ntlm_users: None) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS, mechanisms=("NTLM",)) as (port, handler):
        result = send(ntlm_server(port, make_server, pki, PASSWORD))
    assert result.outcome is Outcome.ACCEPTED
    assert handler.logins == [("NTLM", "EXAMPLE\\herald")]
    assert [r[1] for r in handler.received] == [["ann@example.net"]]


def test_ntlm_with_a_wrong_password_is_rejected(
    make_server: Any, pki: Pki, ntlm_users: None
) -> None:
    with smtp_server(pki, mode=Sec.STARTTLS, mechanisms=("NTLM",)) as (port, handler):
        with pytest.raises(ConnectionLost) as excinfo:
            send(ntlm_server(port, make_server, pki, "wrong"))
    assert str(excinfo.value) == ("Authentication rejected: 535 5.7.3 NTLM authentication failed")
    assert handler.logins == [] and handler.received == []


def xoauth2_server(port: int, make_server: Any, pki: Pki, token: str) -> SmtpServer:
    return make_server(
        port,
        security=Sec.SSL,
        ca_bundle=pki.ca_pem,
        auth_method=Auth.OAUTH2,
        oauth_provider=SmtpServer.OAuthProvider.GMAIL,
        username=USER,
        oauth_access_token=token,
    )


def test_xoauth2_sends_with_the_stored_access_token(make_server: Any, pki: Pki) -> None:
    with smtp_server(pki, mode=Sec.SSL, mechanisms=("XOAUTH2",)) as (port, handler):
        server = xoauth2_server(port, make_server, pki, ACCESS_TOKEN)
        server.refresh_from_db()  # the token comes back decrypted
        result = send(server)
    assert result.outcome is Outcome.ACCEPTED
    assert handler.logins == [("XOAUTH2", USER)]


def test_xoauth2_with_a_stale_token_reports_the_providers_reply(make_server: Any, pki: Pki) -> None:
    with smtp_server(pki, mode=Sec.SSL, mechanisms=("XOAUTH2",)) as (port, handler):
        with pytest.raises(ConnectionLost) as excinfo:
            send(xoauth2_server(port, make_server, pki, "ya29.expired"))
    assert str(excinfo.value).startswith(
        "Authentication rejected: 535 5.7.8 Username and Password not accepted."
    )
    assert handler.received == []


def test_clear_text_over_implicit_tls_with_a_ca_bundle_sends(make_server: Any, pki: Pki) -> None:
    with smtp_server(pki, mode=Sec.SSL) as (port, handler):
        server = make_server(
            port,
            security=Sec.SSL,
            ca_bundle=pki.ca_pem,
            auth_method=Auth.CLEAR_TEXT,
            username=USER,
            password=PASSWORD,
        )
        result = send(server)
    assert result.outcome is Outcome.ACCEPTED
    assert result.queue_id == "Q1"


def test_an_inactive_server_does_not_send_and_says_why(make_server: Any) -> None:
    with smtp_server() as (port, handler):
        server = make_server(port, name="Relay", is_active=False)
        with pytest.raises(ConnectionLost, match="The SMTP server “Relay” is inactive"):
            send(server)
    assert handler.helo_names == []


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_real_sends_update_the_connection_status(make_server: Any) -> None:
    port = free_port()
    server = make_server(port)
    with pytest.raises(ConnectionLost):
        send(server)
    server.refresh_from_db()
    assert server.connection_ok is False
    assert server.connection_status == (
        f"Sending failed at connect: Connection refused: nothing accepts connections on "
        f"127.0.0.1:{port}."
    )
    with smtp_server() as (server.port, _):
        server.save()
        send(server)
    server.refresh_from_db()
    assert server.connection_ok is True
    assert server.connection_status.startswith("OK (last real send). Banner: ")
