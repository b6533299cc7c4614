"""Server time of the monitoring pages with a million campaign items and a
month of job runs, and the plan of every query that reads campaign items.

Seeds (set-based SQL) 1,000,000 contacts and items: a completed campaign of
600,000 and two sending ones of 400,000 (250,000 sent, 20,000 failed,
10,000 deferred, 120,000 pending), plus 2,340,000 job runs (nine jobs
every 10 s for a month). Then asks each page five times through Django's
test client and prints the median server and database time, and for each
query on campaign items (or slower than 20 ms) the scans of its plan
(EXPLAIN ANALYZE). Works in a database of its own (test_<name>), dropped
at the end.

    python -m config.launcher exec -- python bench/monitoring_pages.py

(by hand: make bench runs bench/run.py)

BENCH_ITEMS scales the items (and contacts); BENCH_RUNS the job runs per job.

Measured 2026-11-26 on the shared 2-core machine (other test suites running):
    /jobs/ and /jobs/live/   160-430 ms, of it 55-140 ms one query: the
                             backlog count, a bitmap scan of item_due_idx
                             over the 130,000 due items (it grows with the
                             backlog, not with the table)
    /jobs/history/           150-270 ms with an exact COUNT(*) and OFFSET
                             over 2.3 M runs; about 30 ms by keyset and a
                             capped count
    /metrics                 230-720 ms: messages by outcome read every item
                             of the unfinished campaigns (400,000; before,
                             a sequential scan of all 1,000,000)
    /troubleshooting         as /metrics, plus the error classes (the failed
                             and deferred items of unfinished campaigns)
    /admin/ (dashboard)      740 ms: one count per live campaign over its
                             items (campaigns.selectors.campaign_progress)
                             and a sequential count of all contacts
The item counts want counters maintained by the pipeline (see the report
of the job-manager work); nothing here is a timed assertion.
"""

from __future__ import annotations

import os
import re
import statistics
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

ITEMS = int(os.environ.get("BENCH_ITEMS", "1000000"))
RUNS_PER_JOB = int(os.environ.get("BENCH_RUNS", "260000"))
PAGES = ["/jobs/", "/jobs/live/", "/jobs/history/", "/metrics", "/troubleshooting", "/admin/"]
SEEDED = ["campaigns_campaignitem", "campaigns_campaign", "campaigns_contact", "jobs_jobrun"]


def seed() -> None:
    from campaigns.models import Campaign
    from tests.helpers import make_dispatcher, make_template

    done_n, live_n = ITEMS * 6 // 10, ITEMS - ITEMS * 6 // 10
    relay_a, relay_b = make_dispatcher(name="Relay A"), make_dispatcher(name="Relay B")
    template = make_template()
    done = Campaign.objects.create(
        name="Done", template=template, dispatcher=relay_a, status="completed"
    )
    live = [
        Campaign.objects.create(
            name=f"Live {d.name}",
            template=template,
            dispatcher=d,
            status="sending",
            scheduled_at=timezone.now(),
        )
        for d in (relay_a, relay_b)
    ]
    sent, failed, deferred = live_n * 5 // 8, live_n * 27 // 40, live_n * 7 // 10
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO campaigns_contact (email, phone, first_name, last_name, language, "
            "time_zone, attributes, status, source, created_at, updated_at) "
            "SELECT 'user'||i||'@example.org', '', 'First'||i, 'Last'||i, '', '', '{}', "
            "'active', '', now(), now() FROM generate_series(1, %s) i",
            [ITEMS],
        )
        cur.execute("SELECT min(id) FROM campaigns_contact")
        base = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO campaigns_campaignitem (campaign_id, contact_id, status, token, "
            "attempts, possibly_duplicated, smtp_code, smtp_response, queue_id, skip_reason, "
            "sent_at) SELECT %s, %s + i - 1, CASE WHEN i %% 60 = 0 THEN 'failed' ELSE 'sent' "
            "END, md5('a'||i), 1, false, 250, '250 ok', '', '', now() "
            "FROM generate_series(1, %s) i",
            [done.pk, base, done_n],
        )
        cur.execute(
            "INSERT INTO campaigns_campaignitem (campaign_id, contact_id, status, token, "
            "attempts, possibly_duplicated, smtp_code, smtp_response, queue_id, skip_reason, "
            "next_attempt_at) SELECT CASE WHEN i %% 4 = 0 THEN %s ELSE %s END, %s + %s + i - 1, "
            "CASE WHEN i <= %s THEN 'sent' WHEN i <= %s THEN 'failed' WHEN i <= %s "
            "THEN 'deferred' ELSE 'pending' END, md5('b'||i), 0, false, "
            "CASE WHEN i <= %s THEN 250 WHEN i <= %s THEN 550 WHEN i <= %s THEN 451 END, "
            "CASE WHEN i <= %s THEN '250 2.0.0 ok' WHEN i <= %s THEN "
            "'550 5.1.1 <user'||i||'@example.org> unknown' WHEN i <= %s THEN "
            "'451 4.7.1 try later' ELSE '' END, '', '', "
            "CASE WHEN i > %s AND i <= %s THEN now() + interval '1 hour' END "
            "FROM generate_series(1, %s) i",
            [live[1].pk, live[0].pk, base, done_n, sent, failed, deferred]
            + [sent, failed, deferred] * 2
            + [failed, deferred, live_n],
        )
        cur.execute(
            "INSERT INTO jobs_jobrun (job, started_at, finished_at, items_processed, outcome, "
            "error, worker) SELECT j, now() - i * interval '10 seconds', "
            "now() - i * interval '10 seconds' + interval '0.2 seconds', i %% 100, "
            "CASE WHEN i %% 500 = 0 THEN 'failed' ELSE 'ok' END, "
            "CASE WHEN i %% 500 = 0 THEN 'RuntimeError: boom' ELSE '' END, 'bench:1' "
            "FROM generate_series(1, %s) i, unnest(%s::text[]) j",
            [RUNS_PER_JOB, [job.value for job in _beat_jobs()]],
        )
        for table in SEEDED:
            cur.execute(f"VACUUM ANALYZE {table}")


def _beat_jobs() -> list:
    from jobs.models import ON_DEMAND_ONLY, Job

    return [job for job in Job if job not in ON_DEMAND_ONLY]


def measure(client: Client, url: str, headers: dict[str, str]) -> None:
    client.get(url, headers=headers)  # warm caches and connections
    totals, dbs = [], []
    for _ in range(5):
        with CaptureQueriesContext(connection) as ctx:
            start = time.perf_counter()
            client.get(url, headers=headers)
            totals.append(time.perf_counter() - start)
        dbs.append(sum(float(q["time"]) for q in ctx.captured_queries))
    print(
        f"{url}: median {statistics.median(totals) * 1000:.0f} ms, "
        f"database {statistics.median(dbs) * 1000:.0f} ms, {len(ctx.captured_queries)} queries"
    )
    with connection.cursor() as cur:
        for query in ctx.captured_queries:
            sql = query["sql"]
            if "campaignitem" not in sql and float(query["time"]) < 0.02:
                continue
            print(f"  {float(query['time']) * 1000:.0f} ms  {sql[:110]}")
            if sql.lstrip().upper().startswith("SELECT"):
                cur.execute("EXPLAIN (ANALYZE) " + sql)
                for line in (row[0].strip() for row in cur.fetchall()):
                    if re.search(r"Scan |Execution Time", line):
                        print(f"      {line[:150]}")


def main() -> None:
    from accounts.roles import ADMINISTRATOR
    from accounts.services import user_create
    from jobs.services import support_token_create

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    settings.ALLOWED_HOSTS = ["*"]
    settings.HERALD_WORKERS_TIMEOUT = 0.2
    try:
        started = time.perf_counter()
        seed()
        print(
            f"monitoring_pages: {ITEMS:,} items, {RUNS_PER_JOB * len(_beat_jobs()):,} job runs, "
            f"seeded in {time.perf_counter() - started:.0f} s (db {test_db})"
        )
        admin = user_create(
            username="bench-admin",
            email="bench@herald.test",
            password="x-Bench-123456",
            role=ADMINISTRATOR,
        )
        _, raw = support_token_create(name="bench", user=None)
        client = Client()
        client.force_login(admin)
        for url in PAGES:
            measure(client, url, {"Authorization": f"Bearer {raw}"})
    finally:
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
