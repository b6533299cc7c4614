"""A login the server rejects while sending (an XOAUTH2 bearer it refuses,
a password): every dispatcher on that server stops, and the administrators
are told what to do, with a link to the server."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.roles import OPERATOR
from dispatchers.models import Dispatcher
from dispatchers.services import dispatcher_resume
from dispatchers.transports import ConnectionLost
from jobs.models import Notification
from smtpservers.models import SmtpServer
from smtpservers.services import server_record_auth_rejected
from tests.helpers import make_dispatcher

from .servers import USER, Pki, smtp_server
from .test_transport_auth import send, xoauth2_server

REJECTED = "Authentication rejected: 535 5.7.8 Username and Password not accepted."


def open_notes() -> list[Notification]:
    return list(Notification.objects.filter(resolved_at__isnull=True))


def oauth_server(**fields: Any) -> SmtpServer:
    return SmtpServer.objects.create(
        name="Office relay",
        host="smtp.office365.com",
        port=587,
        security=SmtpServer.Security.STARTTLS,
        auth_method=SmtpServer.AuthMethod.OAUTH2,
        oauth_provider=SmtpServer.OAuthProvider.OFFICE365,
        username=USER,
        **fields,
    )


@pytest.mark.django_db
def test_every_dispatcher_on_the_server_stops_and_others_go_on(key: str) -> None:
    server = oauth_server()
    other = SmtpServer.objects.create(name="Other relay", host="smtp.example.net")
    news = make_dispatcher(name="News", smtp_server=server)
    alerts = make_dispatcher(name="Alerts", smtp_server=server)
    elsewhere = make_dispatcher(name="Elsewhere", smtp_server=other)

    stopped = server_record_auth_rejected(server=server, error=REJECTED)

    assert sorted(stopped) == ["Alerts", "News"]
    for dispatcher in (news, alerts):
        dispatcher.refresh_from_db()
        assert not dispatcher.is_enabled
        assert dispatcher.paused_reason.startswith(
            "Stopped: the SMTP server “Office relay” rejected the login. Authentication rejected"
        )
    elsewhere.refresh_from_db()
    assert elsewhere.is_enabled
    server.refresh_from_db()
    assert server.connection_ok is False
    assert server.connection_status == f"Sending failed: login rejected. {REJECTED}"


@pytest.mark.django_db
def test_the_notification_says_generate_tokens_again_and_links_to_the_server(key: str) -> None:
    server = oauth_server()
    make_dispatcher(name="News", smtp_server=server)

    server_record_auth_rejected(server=server, error=REJECTED)
    server_record_auth_rejected(server=server, error=REJECTED)  # a second batch, same story

    [note] = open_notes()
    assert note.level == Notification.Level.ERROR
    assert note.title == "SMTP server “Office relay” rejected the login: its dispatchers stopped"
    assert "Generate tokens again" in note.message
    assert "Dispatchers on this server: News." in note.message
    assert note.link == reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    assert note.occurrences == 2


@pytest.mark.django_db
def test_a_password_server_is_told_to_fix_the_password(key: str) -> None:
    server = SmtpServer.objects.create(
        name="Relay",
        host="smtp.example.org",
        auth_method=SmtpServer.AuthMethod.CLEAR_TEXT,
        username="herald",
        password="old",
    )
    server_record_auth_rejected(server=server, error="Authentication rejected: 535 5.7.8 no")
    [note] = open_notes()
    assert "correct the account name and password" in note.message
    assert "Generate tokens" not in note.message


@pytest.mark.django_db
def test_operators_see_the_link_in_the_job_manager(key: str, client: Client) -> None:
    from tests.jobs.conftest import make_user

    server = oauth_server()
    make_dispatcher(name="News", smtp_server=server)
    server_record_auth_rejected(server=server, error=REJECTED)
    client.force_login(make_user(OPERATOR))
    page = client.get("/jobs/").content.decode()
    link = reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    assert f'<a href="{link}">SMTP server “Office relay” rejected the login' in page


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_refused_bearer_while_sending_stops_the_servers_dispatchers(
    make_server: Any, pki: Pki
) -> None:
    with smtp_server(pki, mode=SmtpServer.Security.SSL, mechanisms=("XOAUTH2",)) as (port, h):
        server = xoauth2_server(port, make_server, pki, "ya29.revoked-by-the-tenant")
        news = make_dispatcher(name="News", smtp_server=server)
        alerts = make_dispatcher(name="Alerts", smtp_server=server)
        with pytest.raises(ConnectionLost) as excinfo:
            send(server)
    assert excinfo.value.retry_pointless
    assert h.received == []
    assert not Dispatcher.objects.filter(pk__in=[news.pk, alerts.pk], is_enabled=True).exists()
    [note] = open_notes()
    assert "535 5.7.8 Username and Password not accepted." in note.message
    assert "Generate tokens again" in note.message
    assert note.link == reverse("admin:smtpservers_smtpserver_change", args=[server.pk])

    # Resumed by hand, the dispatcher sends again; the server's note stays
    # until the tokens are generated again.
    assert dispatcher_resume(dispatcher=news)
    assert len(open_notes()) == 1


@pytest.mark.django_db
def test_a_successful_connection_test_clears_the_notice(key: str, make_server: Any) -> None:
    from smtpservers.services import connection_test

    with smtp_server() as (port, _handler):
        server = make_server(port, name="Relay")
        server_record_auth_rejected(server=server, error="Authentication rejected: 535 no")
        assert len(open_notes()) == 1
        assert connection_test(server=server).ok
    assert open_notes() == []


@pytest.mark.django_db
def test_a_rejected_pop3_login_points_at_the_pop3_password(key: str) -> None:
    server = oauth_server(pop_before_smtp=True)
    server_record_auth_rejected(
        server=server, error="POP3 login rejected: -ERR [AUTH] Invalid login"
    )
    [note] = open_notes()
    assert "correct the POP3 account name and password" in note.message
    assert "Generate tokens" not in note.message
