"""Exact limits under concurrency: four real processes claim and send for
one dispatcher, each on the same compressed clock, against a real SMTP
server. The hourly limit holds in every rolling hour, is used with a
backlog, and blocks with pauses are honoured."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign
from dispatchers.models import Dispatcher
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink
from tests.workers import ROOT, celery_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
PROCESSES = 4


def run_processes(
    dispatcher: Dispatcher, tmp_path: Path, *, speedup: float, seconds: float
) -> list[tuple[datetime, int]]:
    """Start the processes together; return every claim, in time order."""
    start = timezone.now()
    out = tmp_path / "claims.jsonl"
    args = [str(dispatcher.pk), start.isoformat(), str(speedup), str(seconds), str(out)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ratelimit_process", *args],
            cwd=ROOT,
            env=celery_env(),
            stdout=(tmp_path / f"process{n}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for n in range(PROCESSES)
    ]
    for process in processes:
        assert process.wait(timeout=seconds + 60) == 0, (tmp_path / "process0.log").read_text()
    claims = [json.loads(line) for line in out.read_text().splitlines()]
    return sorted((datetime.fromisoformat(c["at"]), c["size"]) for c in claims)


def backlog(dispatcher: Dispatcher, count: int) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


def test_four_processes_keep_the_hourly_limit_in_every_rolling_hour_and_use_it(
    tmp_path: Path,
) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port),
            messages_per_hour=600,
            batch_size=20,
            pacing=Dispatcher.Pacing.SPREAD,
        )
        backlog(dispatcher, 1500)
        # 120x: an hour in 30 s; 80 virtual minutes in all.
        claims = run_processes(dispatcher, tmp_path, speedup=120, seconds=40)

    times = [at for at, _ in claims]
    for i, first in enumerate(times):  # every rolling hour starting at a claim
        in_hour = sum(size for at, size in claims[i:] if at < first + timedelta(hours=1))
        assert in_hour <= 600, f"{in_hour} in the hour from {first}"
    first_hour = sum(size for at, size in claims if at < times[0] + timedelta(hours=1))
    assert first_hour >= 570  # within 5% of the limit, with a backlog
    # Every message claimed was delivered, each recipient once.
    assert set(sink.per_recipient().values()) == {1}
    assert len(sink.per_recipient()) == sum(size for _, size in claims)


def test_blocks_and_pauses_hold_with_four_processes(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port),
            messages_per_hour=100_000,
            batch_size=20,
            pacing=Dispatcher.Pacing.BLOCKS,
            block_size=50,
            block_pause_minutes=5,
        )
        backlog(dispatcher, 400)
        claims = run_processes(dispatcher, tmp_path, speedup=60, seconds=25)

    # In the ledger's minutes: a block is claims with no 5-minute gap.
    blocks: list[int] = []
    last_minute: datetime | None = None
    for at, size in claims:
        minute = at.replace(second=0, microsecond=0)
        if last_minute is None or minute - last_minute >= timedelta(minutes=5):
            blocks.append(0)
        blocks[-1] += size
        last_minute = minute
    assert len(blocks) >= 3, blocks  # 25 virtual minutes: a block every 5 or so
    assert all(block == 50 for block in blocks[:-1]), blocks
    assert blocks[-1] <= 50
    assert set(sink.per_recipient().values()) == {1}
