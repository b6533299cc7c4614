"""The dispatcher add form: a second dispatcher on a server starts with the
mail service that server already uses, and pacing is chosen there."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from dispatchers.models import Dispatcher
from smtpservers.models import SmtpServer

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
        "delivery_mode": "smtp",
        "smtp_server": "",
        "pickup_directory": "",
        "from_email": "news@example.org",
        "from_name": "Example News",
        "reply_to": "",
    }
    data.update(changes)
    return data


def test_a_second_dispatcher_on_a_server_relays_through_its_smtp_server(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    response = administrator_client.post(ADD_URL, add_form(), follow=True)

    added = Dispatcher.objects.get(name="Announcements")
    assert added.smtp_server == dispatcher.smtp_server
    assert (
        "Relays through SMTP server “Relay”, the mail service of dispatcher “Newsletter” "
        "on server mailer1." in response.content.decode()
    )


def test_the_server_name_matches_whatever_its_case(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    administrator_client.post(ADD_URL, add_form(server_name="MAILER1"))

    assert Dispatcher.objects.get(name="Announcements").smtp_server == dispatcher.smtp_server


def test_an_smtp_server_chosen_in_the_form_is_kept(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    other = SmtpServer.objects.create(name="Other relay", host="127.0.0.2", port=25, timeout=5)

    response = administrator_client.post(ADD_URL, add_form(smtp_server=str(other.pk)), follow=True)

    assert Dispatcher.objects.get(name="Announcements").smtp_server == other
    assert "Relays through SMTP server" not in response.content.decode()


def test_on_a_server_without_a_dispatcher_the_smtp_server_is_still_required(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    response = administrator_client.post(ADD_URL, add_form(server_name="mailer2"))

    assert "Choose the SMTP server to relay through." in response.content.decode()
    assert not Dispatcher.objects.filter(name="Announcements").exists()


def test_a_pickup_dispatcher_on_the_server_gets_no_smtp_server(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    administrator_client.post(
        ADD_URL, add_form(delivery_mode="pickup", pickup_directory="/var/spool/herald")
    )

    assert Dispatcher.objects.get(name="Announcements").smtp_server is None


def test_pacing_is_chosen_in_the_form_and_an_unknown_one_refused(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    administrator_client.post(ADD_URL, add_form(pacing="fast"))
    refused = administrator_client.post(ADD_URL, add_form(name="Other", pacing="burst"))

    assert Dispatcher.objects.get(name="Announcements").pacing == Dispatcher.Pacing.FAST
    assert "Select a valid choice. burst is not one of the available choices." in (
        refused.content.decode()
    )
    assert not Dispatcher.objects.filter(name="Other").exists()


def test_the_dmarc_alignment_reads_as_two_lines_not_as_markup(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    page = administrator_client.get(
        reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    ).content.decode()

    alignment = page.split("DMARC alignment")[1].split('<div class="readonly">')[1]
    alignment = alignment.split("</div>")[0]
    assert "&lt;br&gt;" not in alignment
    assert "unsigned<br>SPF (return path): aligned" in alignment
