"""The cast of the bounce tests: a POP3 server holding a maildrop, and the
bounce mailbox that reads it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from bounces.models import BounceMailbox

from .pop3 import Maildrop, Pop3Server


def interval_passes(mailbox: BounceMailbox) -> None:
    """Move the mailbox's last read back by its poll interval: the next run reads it."""
    BounceMailbox.objects.filter(pk=mailbox.pk).update(
        last_polled_at=timezone.now() - timedelta(minutes=mailbox.poll_interval)
    )


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def maildrop() -> Maildrop:
    return Maildrop()


@pytest.fixture
def pop3(maildrop: Maildrop) -> Iterator[Pop3Server]:
    server = Pop3Server(maildrop).start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(db: None, pop3: Pop3Server, maildrop: Maildrop) -> BounceMailbox:
    return BounceMailbox.objects.create(
        name="Bounces",
        host="127.0.0.1",
        port=pop3.port,
        security=BounceMailbox.Security.NONE,
        timeout=5,
        username=maildrop.user,
        password=maildrop.password,
    )
