"""Secrets at rest: SmtpServer.password is ciphertext in the database,
masked in Python, write-only in the admin, and survives key rotation."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry
from django.core import serializers
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from smtpservers.encryption import MASK, Secret
from smtpservers.models import SmtpServer

from .conftest import PLAINTEXT, new_key

pytestmark = pytest.mark.django_db


def raw_password(server: SmtpServer) -> str:
    """The column as stored, read past the ORM's decryption."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM smtpservers_smtpserver WHERE id = %s", [server.pk])
        return cursor.fetchone()[0]


def change_form_data(server: SmtpServer, **overrides: str) -> dict[str, str]:
    data = {
        "name": server.name,
        "host": server.host,
        "port": str(server.port),
        "security": server.security,
        "verify_certificate": "on",
        "timeout": str(server.timeout),
        "helo_name": server.helo_name,
        "is_active": "on",
        "auth_method": server.auth_method,
        "username": server.username,
        "password": "",
    }
    data |= overrides
    data.setdefault("password_confirm", data["password"])  # the form asks for it twice
    return data


def rotate(*args: str) -> str:
    out = io.StringIO()
    call_command("rotate_encryption_keys", *args, stdout=out, stderr=out)
    return out.getvalue()


# --- at rest -------------------------------------------------------------------


def test_it_stores_no_plaintext(server: SmtpServer, key: str) -> None:
    stored = raw_password(server)
    assert PLAINTEXT not in stored
    # A Fernet token (version byte 0x80) made with the current key.
    assert stored.startswith("gAAAAA")
    assert Fernet(key.encode()).decrypt(stored.encode()).decode() == PLAINTEXT


def test_it_encrypts_the_same_value_differently_each_time(db: None, key: str) -> None:
    a = SmtpServer.objects.create(name="A", host="a.example.org", password=PLAINTEXT)
    b = SmtpServer.objects.create(name="B", host="b.example.org", password=PLAINTEXT)
    assert raw_password(a) != raw_password(b)


def test_it_stores_a_blank_password_as_blank(db: None, key: str) -> None:
    server = SmtpServer.objects.create(name="Open relay", host="relay.example.org")
    assert raw_password(server) == ""
    server.refresh_from_db()
    assert not server.password
    assert server.password.reveal() == ""


def test_it_reads_back_with_reveal(server: SmtpServer) -> None:
    server = SmtpServer.objects.get(pk=server.pk)
    assert isinstance(server.password, Secret)
    assert server.password.reveal() == PLAINTEXT


def test_the_secret_masks_itself_in_str_repr_and_formatting(server: SmtpServer) -> None:
    secret = SmtpServer.objects.get(pk=server.pk).password
    assert str(secret) == MASK
    assert repr(secret) == MASK
    assert f"{secret}" == MASK
    assert "%s %r" % (secret, secret) == f"{MASK} {MASK}"  # noqa: UP031 (as logging formats)
    assert PLAINTEXT not in repr({"password": secret})


def test_serialisers_get_the_ciphertext(server: SmtpServer) -> None:
    dumped = serializers.serialize("json", SmtpServer.objects.filter(pk=server.pk))
    assert PLAINTEXT not in dumped
    assert raw_password(server)[:6] in dumped


# --- the admin form ------------------------------------------------------------


def test_the_admin_change_form_never_shows_the_secret(
    server: SmtpServer, administrator_client: Client
) -> None:
    response = administrator_client.get(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk])
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="password"' in html
    assert PLAINTEXT not in html
    assert raw_password(server) not in html  # nor its ciphertext


def test_the_admin_changelist_never_shows_the_secret(
    server: SmtpServer, administrator_client: Client
) -> None:
    response = administrator_client.get(reverse("admin:smtpservers_smtpserver_changelist"))
    assert response.status_code == 200
    assert PLAINTEXT not in response.content.decode()


def test_posting_a_blank_password_keeps_the_stored_one(
    server: SmtpServer, administrator_client: Client
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
        change_form_data(server, host="smtp2.example.org", password=""),
    )
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.host == "smtp2.example.org"
    assert server.password.reveal() == PLAINTEXT


def test_posting_a_new_password_replaces_it(
    server: SmtpServer, administrator_client: Client
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
        change_form_data(server, password="a-brand-new-one"),
    )
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.password.reveal() == "a-brand-new-one"
    assert "a-brand-new-one" not in raw_password(server)


def test_a_form_error_does_not_echo_the_typed_password(
    server: SmtpServer, administrator_client: Client
) -> None:
    response = administrator_client.post(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
        change_form_data(server, port="0", password="typed-but-invalid-form"),
    )
    assert response.status_code == 200  # the form again, with its error
    html = response.content.decode()
    assert "typed-but-invalid-form" not in html
    assert PLAINTEXT not in html
    server.refresh_from_db()
    assert server.password.reveal() == PLAINTEXT


def test_saving_through_the_admin_logs_no_plaintext(
    server: SmtpServer, administrator_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    connection.force_debug_cursor = True  # log every SQL statement and its parameters
    try:
        administrator_client.post(
            reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
            change_form_data(server, password="logged-nowhere-please"),
        )
    finally:
        connection.force_debug_cursor = False
    # The UPDATE and its parameters were logged: the ciphertext, not the plaintext.
    updates = [r.getMessage() for r in caplog.records if "UPDATE" in r.getMessage()]
    assert any("smtpservers_smtpserver" in m and "gAAAAA" in m for m in updates)
    for record in caplog.records:
        assert "logged-nowhere-please" not in record.getMessage()
    for entry in LogEntry.objects.all():
        assert "logged-nowhere-please" not in entry.change_message


# --- keys ----------------------------------------------------------------------


def test_rotation_lets_the_old_key_be_removed(db: None, settings: Any, key: str) -> None:
    old = key
    servers = [
        SmtpServer.objects.create(name=f"S{i}", host="smtp.example.org", password=f"pw-{i}")
        for i in range(5)
    ]
    blank = SmtpServer.objects.create(name="No auth", host="smtp.example.org")
    before = {s.pk: raw_password(s) for s in servers}

    new = new_key()
    settings.HERALD_ENCRYPTION_KEYS = [new, old]
    output = rotate("--batch-size", "2")

    assert (
        "smtpservers.SmtpServer (password, oauth_access_token, oauth_refresh_token, "
        "pop_password): "
        "re-encrypted 5 value(s) in 5 row(s)" in output
    )
    assert "Re-encrypted 5 value(s) in total." in output
    for i, s in enumerate(servers):
        assert f"pw-{i}" not in output
        assert raw_password(s) != before[s.pk]
        assert Fernet(new.encode()).decrypt(raw_password(s).encode()).decode() == f"pw-{i}"
    assert raw_password(blank) == ""

    settings.HERALD_ENCRYPTION_KEYS = [new]
    for i, s in enumerate(servers):
        assert SmtpServer.objects.get(pk=s.pk).password.reveal() == f"pw-{i}"


def test_without_rotation_removing_the_old_key_is_a_clear_error(
    server: SmtpServer, settings: Any
) -> None:
    settings.HERALD_ENCRYPTION_KEYS = [new_key()]
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted") as excinfo:
        SmtpServer.objects.get(pk=server.pk)
    assert PLAINTEXT not in str(excinfo.value)


def test_a_dry_run_counts_and_writes_nothing(server: SmtpServer, settings: Any, key: str) -> None:
    stored = raw_password(server)
    settings.HERALD_ENCRYPTION_KEYS = [new_key(), key]
    output = rotate("--dry-run")
    assert (
        "smtpservers.SmtpServer (password, oauth_access_token, oauth_refresh_token, "
        "pop_password): "
        "would re-encrypt 1 value(s) in 1 row(s)" in output
    )
    assert "Dry run: would re-encrypt 1 value(s) in total." in output
    assert raw_password(server) == stored


def test_rotation_refuses_a_value_no_key_can_read(
    server: SmtpServer, settings: Any, key: str
) -> None:
    other = SmtpServer.objects.create(name="Other", host="smtp.example.org", password="other")
    stored = raw_password(server)
    settings.HERALD_ENCRYPTION_KEYS = [new_key()]  # the key they were made with is gone
    with pytest.raises(CommandError, match=rf"smtpservers.SmtpServer.password of row {server.pk}"):
        rotate()
    assert raw_password(server) == stored
    settings.HERALD_ENCRYPTION_KEYS = [key]
    assert SmtpServer.objects.get(pk=other.pk).password.reveal() == "other"


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["not-a-fernet-key"], id="malformed"),
        pytest.param([], id="none"),
    ],
)
def test_a_bad_key_setting_is_a_clear_error(
    server: SmtpServer, settings: Any, keys: list[str]
) -> None:
    settings.HERALD_ENCRYPTION_KEYS = keys
    with pytest.raises(ImproperlyConfigured, match="HERALD_ENCRYPTION_KEYS"):
        SmtpServer.objects.get(pk=server.pk)
    with pytest.raises(CommandError, match="HERALD_ENCRYPTION_KEYS"):
        rotate()


def test_keeping_the_password_is_not_recorded_as_a_change(
    server: SmtpServer, administrator_client: Client
) -> None:
    administrator_client.post(
        reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
        change_form_data(server, host="smtp2.example.org", password=""),
    )
    entry = LogEntry.objects.get(object_id=str(server.pk))
    assert entry.get_change_message() == "Changed Host."
