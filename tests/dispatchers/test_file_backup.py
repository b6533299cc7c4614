"""File backup: every sent message also lands as an .eml file in a folder
named by placeholders, which no value can make climb out of it."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from campaigns import services
from campaigns.models import Campaign, CampaignItem
from dispatchers.models import Dispatcher
from dispatchers.transports.backup import backup_folder, sanitise, validate_backup_path
from tests.helpers import (
    make_audience,
    make_campaign,
    make_dispatcher,
    make_smtp_server,
    make_template,
)
from tests.smtp import SmtpSink

from .test_delivery_mode_forms import ADD_URL, add_form, refused

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def send_campaign(dispatcher: Dispatcher, count: int, **template: Any) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher,
        lists=[make_audience(count)],
        template=make_template(**template) if template else None,
        status=Campaign.Status.SCHEDULED,
    )
    services.items_generate()
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)
    return campaign


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_each_message_the_relay_accepts_is_also_saved_under_its_placeholders(
    tmp_path: Path,
) -> None:
    root = tmp_path / "backup"
    refuse = {"user2@example.org": "550 5.1.1 User unknown"}
    with SmtpSink(rcpt_rule=refuse.get) as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port),
            backup_directory=f"{root}/{{campaign}}/{{date}}/{{recipient}}",
        )
        campaign = send_campaign(dispatcher, 3)

    saved = files_under(root)
    assert [p.relative_to(root).parts[0] for p in saved] == [str(campaign.pk)] * 2
    assert {p.parent.name for p in saved} == {"user0@example.org", "user1@example.org"}
    assert all(p.suffix == ".eml" for p in saved)
    # The copy is the message as it went on the wire, byte for byte.
    by_recipient = {r.recipients[0]: r.raw for r in sink.received}
    for path in saved:
        assert path.read_bytes().replace(b"\r\n", b"\n") == (
            by_recipient[path.parent.name].replace(b"\r\n", b"\n")
        )
    assert CampaignItem.objects.get(contact__email="user2@example.org").status == S.FAILED


def test_a_hostile_subject_cannot_climb_out_of_the_backup_folder(tmp_path: Path) -> None:
    root = tmp_path / "backup"
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.PICKUP,
        pickup_directory=str(tmp_path / "outbox"),
        backup_directory=f"{root}/{{subject}}",
    )

    send_campaign(dispatcher, 1, subject="../../../../escaped/{{ contact.first_name }}")

    saved = files_under(tmp_path / "backup")
    assert len(saved) == 1
    assert saved[0].parent.parent == root
    assert not (tmp_path / "escaped").exists()
    assert not list(tmp_path.parent.glob("escaped"))


def test_a_backup_that_cannot_be_written_does_not_fail_the_send(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "backup"
    blocker.write_text("a file where the folder should be")
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.PICKUP,
        pickup_directory=str(tmp_path / "outbox"),
        backup_directory=f"{blocker}/{{date}}",
    )

    with caplog.at_level(logging.WARNING):
        send_campaign(dispatcher, 2)

    assert set(CampaignItem.objects.values_list("status", flat=True)) == {S.SENT}
    assert len(files_under(tmp_path / "outbox")) == 2
    assert "File backup not written" in caplog.text


@pytest.mark.parametrize(
    "value",
    [
        "..",
        "../../etc/passwd",
        "/etc/passwd",
        "a/b\\c",
        "nul\x00byte",
        "line\r\nbreak",
        ".hidden",
        "x" * 1000,
        "é" * 500,
        "",
        "...",
    ],
)
def test_a_placeholder_value_becomes_one_harmless_path_segment(value: str) -> None:
    segment = sanitise(value)

    assert segment not in ("", ".", "..")
    assert not segment.startswith(".")
    assert not any(c in segment for c in "/\\\x00\r\n")
    assert len(segment.encode()) <= 80


def test_the_expanded_folder_always_stays_under_the_fixed_part(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "../../.."
    message["Feedback-ID"] = "../..:campaign:herald"

    folder = backup_folder(
        f"{tmp_path}/b/{{campaign}}/{{subject}}/{{recipient}}",
        message=message,
        recipient="../../x@example.org",
    )

    assert tmp_path / "b" in folder.parents
    assert len(folder.relative_to(tmp_path / "b").parts) == 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("backup/{date}", "absolute folder path"),
        ("/srv/backup/../etc", "must not contain “..”"),
        ("/srv/backup/{campain}", "Unknown placeholder {campain}"),
        ("/srv/backup/{date:%Y}", "without a format"),
        ("/srv/backup/{date!r}", "without a format"),
        ("/srv/backup/{date", "Unbalanced braces"),
        ("/srv/backup/{0}", "Unknown placeholder"),
        ("/srv/back\nup", "control characters"),
        ("/{campaign}", "fixed part"),
    ],
)
def test_a_bad_backup_folder_is_refused_with_a_clear_reason(path: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_backup_path(path)

    assert message in " ".join(error.value.messages)


def test_the_form_saves_a_backup_folder_and_refuses_a_bad_one(
    administrator_client: Client, tmp_path: Path
) -> None:
    refused(
        administrator_client,
        "backup_directory",
        "Unknown placeholder {name}",
        backup_directory="/srv/backup/{name}",
    )

    response = administrator_client.post(
        ADD_URL, add_form(backup_directory="/srv/herald/backup/{date}/{campaign}")
    )

    assert response.status_code == 302
    saved = Dispatcher.objects.get(name="Announcements")
    assert saved.backup_directory == "/srv/herald/backup/{date}/{campaign}"
    assert reverse("admin:dispatchers_dispatcher_changelist") in response["Location"]
