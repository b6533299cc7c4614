"""Peak memory of the outbound worker while it sends a 200,000-item campaign.

A real Celery worker process sends to an aiosmtpd server that only counts;
this script keeps claiming batches (the process-messages job) and samples
the worker's resident memory (main process plus its pool) once a second
for 60 seconds. Flat means: the last 10 seconds use no more than the
first 10 seconds plus a small margin.

    make bench            # or: python -m config.launcher exec -- python bench/outbound_memory.py

Recipients and duration can be changed with BENCH_RECIPIENTS and
BENCH_SECONDS.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

import psutil  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from django.db import connection  # noqa: E402

RECIPIENTS = int(os.environ.get("BENCH_RECIPIENTS", "200000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "60"))
MARGIN_MB = 16


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        with self.lock:
            self.count += 1
        return "250 2.0.0 Ok: queued"


def rss_mb(process: psutil.Process) -> float:
    try:
        family = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in family) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def main() -> int:
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    from campaigns import services
    from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
    from tests.smtp import free_port
    from tests.workers import celery_env, start_worker, stop

    handler = CountingHandler()
    port = free_port()
    sink = Controller(handler, hostname="127.0.0.1", port=port)
    sink.start()
    worker = None
    try:
        print(f"outbound_memory: {RECIPIENTS:,} recipients, sampling {SECONDS}s (db {test_db})")
        started = time.perf_counter()
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=port),
            server_name="bench",
            batch_size=500,
            connections=4,
            messages_per_hour=10_000_000,
        )
        campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(RECIPIENTS)])
        services.campaign_schedule(campaign=campaign)
        services.items_generate()
        print(f"  audience and items ready in {time.perf_counter() - started:.1f}s")

        log = Path(tempfile.mkdtemp(prefix="herald-bench-")) / "worker.log"
        worker = start_worker([dispatcher.queue], log, celery_env(), concurrency=2)
        process = psutil.Process(worker.pid)
        samples: list[float] = []
        sent_at_start = handler.count
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            services.messages_process()
            samples.append(rss_mb(process))
            time.sleep(1)
        sent = handler.count - sent_at_start
        elapsed = time.perf_counter() - t0
    finally:
        if worker is not None:
            stop(worker)
        sink.stop()
        connection.creation.destroy_test_db(test_db, verbosity=0)

    first, last = samples[:10], samples[-10:]
    flat = max(last) <= max(first) + MARGIN_MB
    print(f"  sent {sent:,} messages in {elapsed:.0f}s ({sent / elapsed:,.0f}/s)")
    print(
        f"  worker RSS MB: first 10s max {max(first):.1f}, last 10s max {max(last):.1f}, "
        f"peak {max(samples):.1f}, min {min(samples):.1f}"
    )
    print("  samples: " + " ".join(f"{s:.0f}" for s in samples))
    print(f"  memory {'flat' if flat else 'GROWING'} (margin {MARGIN_MB} MB)")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
