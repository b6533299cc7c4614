"""A small cast for the job manager tests: one user per role, a dispatcher
with a sending campaign."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from accounts.services import user_create

Login = Callable[[str], Client]


@pytest.fixture(autouse=True)
def fast_setup(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The workers panel waits this long for replies on every page.
    settings.HERALD_WORKERS_TIMEOUT = 0.3


def make_user(role: str) -> AbstractUser:
    name = role.lower()
    return user_create(
        username=name, email=f"{name}@herald.test", password="pw-Herald-1", role=role
    )


@pytest.fixture
def login(db: None, client: Client) -> Login:
    def as_role(role: str) -> Client:
        assert role in (MARKETER, OPERATOR, ADMINISTRATOR)
        client.force_login(make_user(role))
        return client

    return as_role
