"""The cast of the bounce tests: a POP3 server holding a maildrop, and the
bounce mailbox that reads it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from bounces.models import BounceMailbox
from campaigns import services as pipeline
from campaigns.models import Campaign, CampaignItem
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import Received, SmtpSink

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


@pytest.fixture
def sent(db: None) -> dict[str, Received]:
    """Three messages Herald sent for real: recipient -> what the MX got."""
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        make_campaign(
            dispatcher=dispatcher, lists=[make_audience(3)], status=Campaign.Status.SCHEDULED
        )
        pipeline.items_generate()
        while (batch := pipeline.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
            pipeline.batch_send(batch_id=batch.pk)
    assert CampaignItem.objects.filter(status=CampaignItem.Status.SENT).count() == 3
    return {r.recipients[0]: r for r in sink.received}


def item_of(email: str) -> CampaignItem:
    return CampaignItem.objects.select_related("contact").get(contact__email=email)
