"""Configuring a bounce mailbox: the admin page and its warning, the
write-only password, and Test connection with a result a person can act
on (plain, STLS, implicit TLS; wrong password; nothing listening)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from accounts.services import user_create
from bounces.models import BounceMailbox
from bounces.services import connection_test
from tests.smtp import free_port

from .pop3 import Maildrop, Pop3Server, server_tls_context

pytestmark = pytest.mark.django_db


@pytest.fixture
def tls_pop3(maildrop: Maildrop) -> Iterator[Pop3Server]:
    server = Pop3Server(maildrop, tls_context=server_tls_context()).start()
    yield server
    server.stop()


def login(client: Client, role: str) -> Client:
    user = user_create(username=role.lower(), email="a@herald.test", password="pw-1x", role=role)
    client.force_login(user)
    return client


def test_it_logs_in_and_counts_the_messages_without_deleting_any(
    mailbox: BounceMailbox, maildrop: Maildrop, pop3: Pop3Server
) -> None:
    maildrop.add(b"Subject: one\r\n\r\nbody\r\n")
    report = connection_test(mailbox=mailbox)
    assert report.ok
    assert report.message.startswith("Connected and logged in; 1 message(s) waiting")
    assert len(maildrop.messages) == 1
    assert "DELE" not in pop3.log
    mailbox.refresh_from_db()
    assert mailbox.last_status == report.message and mailbox.last_checked_at


def test_a_wrong_password_says_what_the_server_said(
    mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    maildrop.password = "other"
    report = connection_test(mailbox=mailbox)
    assert not report.ok
    assert report.message == "The server refused: -ERR [AUTH] Invalid login"


def test_nothing_listening_is_a_refused_connection(mailbox: BounceMailbox) -> None:
    mailbox.port = free_port()
    report = connection_test(mailbox=mailbox)
    assert not report.ok
    assert report.message.startswith(f"Connection refused by 127.0.0.1:{mailbox.port}")


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "implicit-tls"])
def test_tls_with_a_trusted_by_hand_certificate(
    mailbox: BounceMailbox, maildrop: Maildrop, implicit: bool
) -> None:
    server = Pop3Server(maildrop, tls_context=server_tls_context(), implicit_tls=implicit)
    server.start()
    try:
        mailbox.port = server.port
        mailbox.security = (
            BounceMailbox.Security.SSL if implicit else BounceMailbox.Security.STARTTLS
        )
        mailbox.verify_certificate = False
        assert connection_test(mailbox=mailbox).ok
        assert ("STLS" in server.log) is not implicit

        mailbox.verify_certificate = True
        report = connection_test(mailbox=mailbox)
        assert not report.ok
        assert report.message.startswith("The server's certificate is not trusted")
    finally:
        server.stop()


def test_the_admin_page_warns_that_every_message_is_deleted(
    client: Client, mailbox: BounceMailbox
) -> None:
    admin = login(client, ADMINISTRATOR)
    for url in (
        reverse("admin:bounces_bouncemailbox_changelist"),
        reverse("admin:bounces_bouncemailbox_add"),
        reverse("admin:bounces_bouncemailbox_change", args=[mailbox.pk]),
    ):
        page = admin.get(url).content.decode()
        assert "deleted after processing" in page
        assert "never a personal mailbox" in page


def test_the_password_is_write_only_and_stored_encrypted(
    client: Client, mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    page = login(client, ADMINISTRATOR).get(
        reverse("admin:bounces_bouncemailbox_change", args=[mailbox.pk])
    )
    assert maildrop.password not in page.content.decode()
    with connection.cursor() as cur:
        cur.execute("SELECT password FROM bounces_bouncemailbox WHERE id = %s", [mailbox.pk])
        stored = cur.fetchone()[0]
    assert stored and maildrop.password not in stored


def test_the_test_connection_action_reports_the_result(
    client: Client, mailbox: BounceMailbox, maildrop: Maildrop
) -> None:
    admin = login(client, ADMINISTRATOR)
    response = admin.post(
        reverse("admin:bounces_bouncemailbox_changelist"),
        {"action": "test_connection", "_selected_action": [mailbox.pk]},
        follow=True,
    )
    [message] = list(get_messages(response.wsgi_request))
    assert str(message) == "Bounces: Connected and logged in; 0 message(s) waiting (0 bytes)."
    assert message.level_tag == "success"


def test_the_host_is_validated(client: Client) -> None:
    response = login(client, ADMINISTRATOR).post(
        reverse("admin:bounces_bouncemailbox_add"),
        {
            "name": "x",
            "protocol": "pop3",
            "host": "pop3://mail.example.org",
            "port": 995,
            "security": "ssl",
            "timeout": 30,
            "username": "bounces",
            "password": "pw",
        },
    )
    assert "not a URL" in response.content.decode()
    assert not BounceMailbox.objects.exists()


@pytest.mark.parametrize("role", [MARKETER, OPERATOR])
def test_only_administrators_configure_mailboxes(client: Client, role: str) -> None:
    response = login(client, role).get(reverse("admin:bounces_bouncemailbox_changelist"))
    assert response.status_code == 403
