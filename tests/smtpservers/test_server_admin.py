"""Admin actions: test connection, duplicate, delete refused while in use."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from dispatchers.models import Dispatcher
from smtpservers.models import SmtpServer

from .conftest import PLAINTEXT
from .servers import smtp_server

pytestmark = pytest.mark.django_db


def test_the_test_connection_button_reports_and_stores_the_result(
    administrator_client: Client, make_server: Any
) -> None:
    with smtp_server() as (port, _):
        server = make_server(port, name="Sink")
        response = administrator_client.post(
            reverse("admin:smtpservers_smtpserver_test", args=[server.pk]), follow=True
        )
    html = response.content.decode()
    assert "Sink: OK. Banner: " in html
    server.refresh_from_db()
    assert server.connection_ok is True
    changelist = administrator_client.get(reverse("admin:smtpservers_smtpserver_changelist"))
    assert "herald-connection-ok" in changelist.content.decode()


def test_the_list_action_tests_the_selected_servers(
    administrator_client: Client, make_server: Any
) -> None:
    from tests.smtp import free_port

    port = free_port()
    server = make_server(port, name="Gone")
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_changelist"),
        {"action": "test_connection", "_selected_action": [server.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "Gone: Failed at connect: Connection refused: nothing accepts connections on " in html
    assert "Failed: Failed at connect" in html  # the status column of the list


def test_the_button_needs_a_post(administrator_client: Client, server: SmtpServer) -> None:
    response = administrator_client.get(
        reverse("admin:smtpservers_smtpserver_test", args=[server.pk])
    )
    assert response.status_code == 405


def test_duplicate_copies_everything_secrets_included_and_stays_inactive(
    administrator_client: Client, server: SmtpServer
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_duplicate", args=[server.pk])
    )
    copy = SmtpServer.objects.get(name="Copy of Relay")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:smtpservers_smtpserver_change", args=[copy.pk])
    assert copy.password.reveal() == PLAINTEXT
    assert (copy.host, copy.port, copy.username) == (server.host, server.port, server.username)
    assert copy.is_active is False
    administrator_client.post(reverse("admin:smtpservers_smtpserver_duplicate", args=[server.pk]))
    assert SmtpServer.objects.filter(name="Copy of Relay (2)").exists()


def test_delete_is_refused_with_the_dispatchers_named(
    administrator_client: Client, server: SmtpServer
) -> None:
    for name in ("Newsletter", "Receipts"):
        Dispatcher.objects.create(
            name=name,
            server_name="mailer1",
            type=Dispatcher.Type.EMAIL,
            delivery_mode=Dispatcher.DeliveryMode.SMTP,
            smtp_server=server,
            from_email="news@example.org",
        )
    url = reverse("admin:smtpservers_smtpserver_delete", args=[server.pk])
    response = administrator_client.post(url, {"post": "yes"})
    assert response.status_code == 409
    html = response.content.decode()
    assert "cannot be deleted while these dispatchers send through it" in html
    assert "<li>Newsletter</li>" in html and "<li>Receipts</li>" in html
    assert "Deactivate “Relay” instead" in html
    assert SmtpServer.objects.filter(pk=server.pk).exists()

    administrator_client.post(reverse("admin:smtpservers_smtpserver_deactivate", args=[server.pk]))
    server.refresh_from_db()
    assert server.is_active is False


def test_an_unused_server_can_be_deleted(administrator_client: Client, server: SmtpServer) -> None:
    url = reverse("admin:smtpservers_smtpserver_delete", args=[server.pk])
    assert administrator_client.post(url, {"post": "yes"}).status_code == 302
    assert not SmtpServer.objects.exists()
