"""6. Memory: a CSV import of BENCH_SCALE x 1,000,000 rows, and an outbound
worker across a campaign of BENCH_SCALE x 1,000,000 recipients.

CSV import: a file of contacts (email, phone, names, three custom fields;
about 1% bad rows: invalid addresses, bad phones, duplicates) uploaded
through campaigns.imports.import_upload and run by import_start, whose
Celery task runs eagerly in this process, so its peak resident memory
(ru_maxrss) is the import's. Reference for the speed: PostgreSQL's COPY of
the same file into a bare table.

Outbound worker: the campaign is sent as in benchmark 1 (Celery beat and
one worker, concurrency 2, to smtp-sink), and the resident memory of each
worker process is sampled every second for BENCH_MEMORY_SECONDS of sending
(default 120, times BENCH_SCALE, at least 30) or until the campaign is
done. Flat: the last 10 samples peak no higher than the first 10 plus
16 MB.
"""

from __future__ import annotations

import csv
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Row, scale, scaled

ROWS = [
    Row(
        figure="6. CSV import speed",
        unit="rows/s",
        herald="import_rate",
        reference="copy_rate",
        reference_label="PostgreSQL COPY",
        target=">= 20,000 rows/s",
        met=lambda h, r: h >= 20_000,
    ),
    Row(
        figure="6. CSV import peak RSS",
        unit="MB",
        herald="import_peak_mb",
        target="< 250 MB",
        met=lambda h, r: h < 250,
    ),
    Row(
        figure="6. Outbound worker peak RSS (largest process)",
        unit="MB",
        herald="worker_peak_mb",
        target="< 250 MB",
        met=lambda h, r: h < 250,
    ),
    Row(
        figure="6. Outbound worker RSS growth (last 10 s vs first 10 s)",
        unit="MB",
        herald="worker_growth_mb",
        target="<= 16 MB (flat)",
        met=lambda h, r: h <= 16,
        digits=1,
    ),
]

ROWS_CSV = scaled(1_000_000, minimum=10_000)
RECIPIENTS = scaled(1_000_000, minimum=10_000)
SECONDS = max(30, int(int(os.environ.get("BENCH_MEMORY_SECONDS") or 120) * min(scale(), 1.0)))
MARGIN_MB = 16


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(6)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["email", "phone", "first_name", "last_name", "plan", "score", "signed_up"])
        for i in range(rows):
            email = f"reader{i}@import{i % 50}.example"
            phone = f"+44 20 7946 {i % 10000:04d}"
            roll = rng.random()
            if roll < 0.004:
                email = f"reader{i}.import.example"  # invalid address
            elif roll < 0.007:
                phone = "12345"  # invalid phone
            elif roll < 0.010 and i:
                email = f"reader{i - 1}@import{(i - 1) % 50}.example"  # duplicate
            out.writerow([email, phone, f"First{i}", f"Last, {i}", "gold", i % 100, "2024-05-17"])


def copy_rate(path: Path) -> float:
    from django.db import connection

    connection.ensure_connection()
    with connection.connection.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE bench_copy (email text, phone text, first_name text, "
            "last_name text, plan text, score int, signed_up date)"
        )
        started = time.perf_counter()
        with (
            path.open("rb") as f,
            cur.copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER)") as cp,
        ):
            while chunk := f.read(1 << 20):
                cp.write(chunk)
        elapsed = time.perf_counter() - started
        cur.execute("DROP TABLE bench_copy")
    return ROWS_CSV / elapsed


def csv_import(results) -> None:  # type: ignore[no-untyped-def]
    from celery import current_app
    from django.conf import settings
    from django.core.files.uploadedfile import UploadedFile

    from campaigns import imports
    from campaigns.models import ContactList

    work = Path(tempfile.mkdtemp(prefix="herald-bench-import-"))
    settings.VAR_DIR = work
    current_app.conf.task_always_eager = True
    try:
        path = work / "contacts.csv"
        write_csv(path, ROWS_CSV)
        size = path.stat().st_size
        results.put("copy_rate", copy_rate(path))
        contact_list = ContactList.objects.create(name="Imported")
        before = peak_rss_mb()
        with path.open("rb") as f:
            job = imports.import_upload(
                kind="contacts", uploaded=UploadedFile(f, name=path.name, size=size), user=None
            )
        started = time.perf_counter()
        imports.import_start(
            job=job, mapping=imports.import_mapping_guess(job=job), contact_list=contact_list
        )
        elapsed = time.perf_counter() - started
        job.refresh_from_db()
        after = peak_rss_mb()
    finally:
        current_app.conf.task_always_eager = False
        shutil.rmtree(work, ignore_errors=True)
    if job.status != "done":
        raise RuntimeError(f"the import ended {job.status}: {job.error}")
    results.put("import_rate", job.rows_read / elapsed)
    results.put("import_peak_mb", after)
    results.note(
        f"import of {job.rows_read:,} rows ({size / 2**20:.0f} MiB): {elapsed:.1f}s, "
        f"{job.rows_read / elapsed:,.0f} rows/s, {job.imported:,} imported, {job.rejected:,} "
        f"rejected; process peak RSS {before:.0f} MB before, {after:.0f} MB after; "
        f"COPY {results.figures['copy_rate']:,.0f} rows/s"
    )


def outbound_worker(results) -> None:  # type: ignore[no-untyped-def]
    from bench.common import Celery, Sink, audience_create, rss_mb, template_create
    from campaigns.models import Campaign, CampaignItem
    from campaigns.services import campaign_schedule
    from dispatchers.models import Dispatcher
    from smtpservers.models import SmtpServer

    sink = Sink()
    try:
        contact_list = audience_create(RECIPIENTS, name="Bench memory")
        dispatcher = Dispatcher.objects.create(
            name="Bench memory",
            server_name="benchmemory",
            delivery_mode=Dispatcher.DeliveryMode.SMTP,
            smtp_server=SmtpServer.objects.create(
                name="smtp-sink", host="127.0.0.1", port=sink.port, timeout=30
            ),
            from_email="news@herald.test",
            messages_per_hour=1_000_000_000,
            pacing=Dispatcher.Pacing.FAST,
            batch_size=500,
            connections=4,
        )
        campaign = Campaign.objects.create(
            name="Bench memory", template=template_create(), dispatcher=dispatcher
        )
        campaign.lists.set([contact_list])
        celery = Celery(queues=[dispatcher.queue], concurrency=2)
        samples: list[float] = []
        try:
            celery.wait_ready()
            campaign_schedule(campaign=campaign)
            items = CampaignItem.objects.filter(campaign=campaign)
            while not items.filter(status=CampaignItem.Status.SENT).exists():
                if not celery.alive() or len(samples) > 600:
                    raise RuntimeError("nothing was sent")
                samples.append(0)
                time.sleep(0.5)
            samples = []
            started = time.perf_counter()
            while time.perf_counter() - started < SECONDS:
                samples.append(rss_mb(celery.worker.pid)[0])
                if not items.filter(status__in=CampaignItem.LIVE).exists():
                    break
                time.sleep(1)
            sent = items.filter(status=CampaignItem.Status.SENT).count()
        except Exception:
            print(celery.tail())
            raise
        finally:
            celery.stop()
    finally:
        sink.stop()
    first, last = max(samples[:10]), max(samples[-10:])
    results.put("worker_peak_mb", max(samples))
    results.put("worker_growth_mb", last - first)
    results.note(
        f"outbound worker over {len(samples)}s of a {RECIPIENTS:,}-recipient campaign "
        f"({sent:,} sent): largest process peak {max(samples):.0f} MB, first 10 s {first:.0f} MB, "
        f"last 10 s {last:.0f} MB; samples {' '.join(f'{s:.0f}' for s in samples[::5])}"
    )


def main() -> None:
    from bench.common import Results

    results = Results()
    csv_import(results)
    outbound_worker(results)
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
