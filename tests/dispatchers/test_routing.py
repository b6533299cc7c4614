"""Routing: a dispatcher's outbound batches go to the Celery queue of the
computer it runs on, where `celery worker -Q <that queue>` takes them."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
import redis
from django.conf import settings

from campaigns import services
from campaigns.models import Campaign
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in a queue, as kombu's Redis transport keeps them."""
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_an_outbound_batch_lands_on_its_servers_queue(
    django_capture_on_commit_callbacks: Any,
) -> None:
    server = f"Mailer{os.getpid()}"  # upper case on purpose: queues are lower case
    dispatcher = make_dispatcher(server_name=server)
    other = make_dispatcher(server_name=f"other{os.getpid()}")
    make_campaign(dispatcher=dispatcher, lists=[make_audience(3)], status=Campaign.Status.SCHEDULED)
    services.items_generate()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = f"dispatch.mailer{os.getpid()}"
    client.delete(queue, other.queue)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            batch = services.batch_claim(dispatcher_id=dispatcher.pk)
        assert batch is not None

        (message,) = queued(client, queue)
        assert message["headers"]["task"] == "campaigns.tasks.send_batch"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert args == [batch.pk]
        assert message["properties"]["delivery_info"]["routing_key"] == queue
        assert queued(client, other.queue) == []
        assert dispatcher.queue == queue
    finally:
        client.delete(queue, other.queue)
