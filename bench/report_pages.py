"""The campaign report's reads at 1,000,000 items.

Creates one campaign with BENCH_ITEMS items (default 1,000,000: 90% sent
over the last three hours, 1% failed, 0.5% skipped, the rest pending) in
set-based SQL, then times each read the report page makes, uncached:
counts by status, sends per minute, the recipients table (first page, a
page in the middle, the failed filter, an email prefix search) and the
whole CSV export.

    python -m config.launcher exec -- python bench/report_pages.py

(by hand: make bench runs bench/run.py)

Median of 5 runs each, in milliseconds (export: rows per second).

2026-11-26, the shared 2-core dev machine, PostgreSQL 15, 1,000,000 items:

    counts by status (uncached)              335.3 ms   (cached 5 s by the page)
    sends per minute, 3 hours                547.5 ms   (cached 15 s; 900,000 sends
                                                         in the window: a seq scan)
    recipients, first page                     8.6 ms
    recipients, page in the middle            11.2 ms   (300 ms before the items and
    recipients, previous page                  3.9 ms    their addresses were read
    recipients, failed only                    4.8 ms    apart: see reports._chunk)
    recipients, email prefix                   6.3 ms
    export, every recipient                  22751 rows/s

The chart's cost follows the sends in its window, which the dispatcher's
hourly limit bounds (3 x limit rows); this run squeezes the whole million
into three hours, its worst case.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402

ITEMS = int(os.environ.get("BENCH_ITEMS", "1000000"))
RUNS = 5


def median_ms(work: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        cache.clear()
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def populate(campaign_id: int) -> None:
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO campaigns_contact (email, phone, first_name, last_name, language,
                time_zone, attributes, status, source, created_at, updated_at)
            SELECT 'r' || lpad(g::text, 7, '0') || '@example.org', '', '', '', '', '', '{}',
                   'active', 'bench', now(), now()
            FROM generate_series(1, %s) g
            """,
            [ITEMS],
        )
        cur.execute(
            """
            INSERT INTO campaigns_campaignitem (campaign_id, contact_id, status, token, attempts,
                possibly_duplicated, smtp_response, queue_id, skip_reason, sent_at, smtp_code)
            SELECT %(campaign)s, c.id, s.status, md5(c.id::text), 1, false,
                   CASE WHEN s.status = 'failed' THEN '5.1.1 No such user' ELSE '' END, '',
                   CASE WHEN s.status = 'skipped' THEN 'suppressed' ELSE '' END,
                   CASE WHEN s.status = 'sent'
                        THEN now() - (c.id %% 10800) * interval '1 second' END,
                   CASE WHEN s.status = 'failed' THEN 550 END
            FROM campaigns_contact c,
            LATERAL (SELECT CASE WHEN c.id %% 200 = 0 THEN 'skipped'
                                 WHEN c.id %% 100 = 1 THEN 'failed'
                                 WHEN c.id %% 10 = 5 THEN 'pending'
                                 ELSE 'sent' END AS status) s
            """,
            {"campaign": campaign_id},
        )
        cur.execute("ANALYZE campaigns_contact; ANALYZE campaigns_campaignitem")


def main() -> int:
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    from campaigns import reports
    from campaigns.models import Campaign
    from tests.helpers import make_campaign, make_dispatcher

    try:
        campaign = make_campaign(
            dispatcher=make_dispatcher(), lists=[], status=Campaign.Status.SENDING
        )
        start = time.perf_counter()
        populate(campaign.pk)
        print(f"{ITEMS} items created in {time.perf_counter() - start:.1f}s")
        middle = ITEMS // 2
        last_page = reports.recipients_page(campaign=campaign, after=ITEMS - 60)
        results = {
            "counts by status (uncached)": median_ms(
                lambda: reports.report_counts(campaign=campaign)
            ),
            "sends per minute, 3 hours": median_ms(
                lambda: reports.sends_per_minute(campaign=campaign)
            ),
            "recipients, first page": median_ms(lambda: reports.recipients_page(campaign=campaign)),
            "recipients, page in the middle": median_ms(
                lambda: reports.recipients_page(campaign=campaign, after=middle)
            ),
            "recipients, previous page": median_ms(
                lambda: reports.recipients_page(campaign=campaign, before=middle)
            ),
            "recipients, failed only": median_ms(
                lambda: reports.recipients_page(campaign=campaign, status="failed", after=middle)
            ),
            "recipients, email prefix": median_ms(
                lambda: reports.recipients_page(campaign=campaign, email="r05000")
            ),
        }
        assert len(last_page.rows) > 0
        for name, ms in results.items():
            print(f"{name:36} {ms:9.1f} ms")
        start = time.perf_counter()
        rows = sum(1 for _ in reports.recipients_export_rows(campaign=campaign)) - 1
        seconds = time.perf_counter() - start
        print(f"{'export, every recipient':36} {rows / seconds:9.0f} rows/s ({rows} rows)")
        assert rows == ITEMS
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
