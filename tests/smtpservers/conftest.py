"""A named cast for the secrets tests: a fresh key and an administrator."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.test import Client

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from smtpservers.models import SmtpServer

PLAINTEXT = "correct-horse-battery-staple"


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def key(settings: Any) -> str:
    """The one key in use, known to the test (the environment's is not)."""
    value = new_key()
    settings.HERALD_ENCRYPTION_KEYS = [value]
    return value


@pytest.fixture
def server(db: None, key: str) -> SmtpServer:
    return SmtpServer.objects.create(
        name="Relay",
        host="smtp.example.org",
        port=587,
        auth_method=SmtpServer.AuthMethod.CLEAR_TEXT,
        username="herald",
        password=PLAINTEXT,
    )


@pytest.fixture
def administrator_client(db: None, client: Client) -> Client:
    user = user_create(
        username="ada", email="ada@example.org", password="x-Pass-4567", role=ADMINISTRATOR
    )
    client.force_login(user)
    return client


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from .servers import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_server(db: None, key: str) -> Any:
    """An SmtpServer on the loopback address, with whatever settings a test needs."""

    def make(port: int, **fields: Any) -> SmtpServer:
        fields.setdefault("name", f"Test {port}")
        fields.setdefault("timeout", 5)
        return SmtpServer.objects.create(host="127.0.0.1", port=port, **fields)

    return make
