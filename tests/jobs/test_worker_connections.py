"""A worker keeps its database connection from one task to the next, as a
web process keeps it from one request to the next: an operator watching
PostgreSQL sees one session per worker process, not a new one for every
batch (each costs the database a process start and its caches)."""

from __future__ import annotations

import os
import time

import pytest
from django.db import connection

from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem
from tests.helpers import make_audience, make_campaign, make_dispatcher
from tests.workers import celery_env, start_worker, stop, wait_for

S = CampaignItem.Status


def sessions_opened() -> int:
    """Sessions PostgreSQL has counted on this database so far."""
    time.sleep(1.5)  # backends report their statistics at most once a second
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cur.fetchone()[0])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_sends_batch_after_batch_on_one_database_session(tmp_path) -> None:
    dispatcher = make_dispatcher(
        server_name=f"reuse{os.getpid()}",
        delivery_mode="pickup",
        pickup_directory=str(tmp_path / "outbox"),
        batch_size=2,
    )
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(20)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    sent = CampaignItem.objects.filter(campaign=campaign, status=S.SENT)
    log = tmp_path / f"reuseworker{os.getpid()}.log"
    before = sessions_opened()
    worker = start_worker([dispatcher.queue], log, celery_env(), concurrency=1)
    try:
        # Ten batches, one after the other: each claims its successor.
        services.batch_claim(dispatcher_id=dispatcher.pk)
        wait_for(lambda: sent.count() == 20, timeout=60, what="every batch", logs=[log])
        after = sessions_opened()
    finally:
        stop(worker)

    assert Batch.objects.filter(dispatcher=dispatcher, finished_at__isnull=False).count() == 10
    # The worker's own start (its main and pool process), not one a batch:
    # ten or more before.
    assert after - before <= 3
