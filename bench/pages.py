"""7. Pages: server time of the campaign pages and the job manager with a
campaign of BENCH_SCALE x 1,000,000 items in the database, part way through
sending (60% sent, 1% failed, 1% skipped, 1% deferred, the rest pending),
and a month of job history (20,000 runs).

Each page is requested in-process with Django's test Client, logged in as
an administrator: one request to warm up, then 5 timed; the median is
reported. The time covers everything the server does (middleware, queries,
templates), not the network. A page Herald does not have yet is "n/a"; the
campaign report and the per-recipient table are looked up by URL name, and
until they exist the admin's pages stand in where there is one (the
campaign's admin page with its progress, the admin's item list filtered to
the campaign), each named as such.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import Row, scaled

TARGET = "< 200 ms"


def _under(h: float, r: float | None) -> bool:
    return h < 200


ROWS = [
    Row("7. Page: campaign report", "ms", "report_ms", TARGET, met=_under),
    Row("7. Page: campaign's admin page (progress)", "ms", "admin_campaign_ms", TARGET, met=_under),
    Row("7. Page: recipients table", "ms", "recipients_ms", TARGET, met=_under),
    Row("7. Page: admin item list of the campaign", "ms", "admin_items_ms", TARGET, met=_under),
    Row("7. Page: campaign list (admin)", "ms", "campaign_list_ms", TARGET, met=_under),
    Row("7. Page: job manager", "ms", "job_manager_ms", TARGET, met=_under),
]

ITEMS = scaled(1_000_000, minimum=10_000)
TIMED = 5

# Names a dedicated page may have; the first that resolves is timed.
REPORT_NAMES = ["campaigns:report", "campaigns:campaign_report", "campaigns:campaign_detail"]
RECIPIENT_NAMES = ["campaigns:recipients", "campaigns:campaign_recipients", "campaigns:items"]

_STATUSES = """
UPDATE campaigns_campaignitem SET
    status = CASE WHEN id %% 100 < 60 THEN 'sent' WHEN id %% 100 = 60 THEN 'failed'
                  WHEN id %% 100 = 61 THEN 'skipped' WHEN id %% 100 = 62 THEN 'deferred'
                  ELSE 'pending' END,
    sent_at = CASE WHEN id %% 100 < 60 THEN now() - (id %% 3600) * interval '1 second' END,
    attempts = CASE WHEN id %% 100 <= 62 AND id %% 100 <> 61 THEN 1 ELSE 0 END,
    smtp_code = CASE WHEN id %% 100 < 60 THEN 250 WHEN id %% 100 = 60 THEN 550
                     WHEN id %% 100 = 62 THEN 451 END,
    smtp_response = CASE WHEN id %% 100 < 60 THEN '2.0.0 Ok: queued'
                         WHEN id %% 100 = 60 THEN '5.1.1 No such user'
                         WHEN id %% 100 = 62 THEN '4.2.0 Try again later' ELSE '' END,
    next_attempt_at = CASE WHEN id %% 100 = 62 THEN now() + interval '10 minutes' END
WHERE campaign_id = %(campaign)s
"""

_JOB_RUNS = """
INSERT INTO jobs_jobrun (job, started_at, finished_at, items_processed, outcome, error, worker)
SELECT (ARRAY['campaigns.tasks.generate_items', 'campaigns.tasks.process_messages',
              'campaigns.tasks.send_batch', 'campaigns.tasks.mark_completed'])[1 + i %% 4],
       now() - i * interval '2 minutes', now() - i * interval '2 minutes' + interval '1 second',
       i %% 500, CASE WHEN i %% 97 = 0 THEN 'failed' ELSE 'ok' END,
       CASE WHEN i %% 97 = 0 THEN 'connection refused' ELSE '' END, 'bench@host'
FROM generate_series(1, 20000) AS i
"""


def url_for(names: list[str], pk: int) -> str | None:
    from django.urls import NoReverseMatch, reverse

    for name in names:
        try:
            return reverse(name, args=[pk])
        except NoReverseMatch:
            continue
    return None


def _with_query(url: str | None, query: str) -> str | None:
    return f"{url}?{query}" if url else None


def server_ms(client: Any, url: str | None) -> float | None:
    if url is None:
        return None
    response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}")
    times = []
    for _ in range(TIMED):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return statistics.median(times)


def main() -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from bench.common import Results, audience_create, sql, template_create, vacuum
    from campaigns.models import Campaign
    from campaigns.services import campaign_schedule, items_generate
    from dispatchers.models import Dispatcher

    results = Results()
    contact_list = audience_create(ITEMS)
    dispatcher = Dispatcher.objects.create(
        name="Bench pages", server_name="benchpages", from_email="news@herald.test"
    )
    campaign = Campaign.objects.create(
        name="Bench pages", template=template_create(), dispatcher=dispatcher
    )
    campaign.lists.set([contact_list])
    campaign_schedule(campaign=campaign)
    items_generate()
    sql(_STATUSES, {"campaign": campaign.pk})
    sql(_JOB_RUNS)
    vacuum("campaigns_campaignitem", "jobs_jobrun")

    admin = get_user_model().objects.create_superuser("bench", "bench@herald.test", "x")
    hosts = [h for h in settings.ALLOWED_HOSTS if h != "*" and not h.startswith(".")]
    client = Client(HTTP_HOST=hosts[0] if hosts else "localhost")
    client.force_login(admin)
    pages = {
        "report_ms": url_for(REPORT_NAMES, campaign.pk),
        "admin_campaign_ms": reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
        # The recipients table lives on the report page: its failed filter
        # pages an index instead of walking the sent majority.
        "recipients_ms": url_for(RECIPIENT_NAMES, campaign.pk)
        or _with_query(url_for(REPORT_NAMES, campaign.pk), "status=failed"),
        "admin_items_ms": reverse("admin:campaigns_campaignitem_changelist")
        + f"?campaign__id__exact={campaign.pk}",
        "campaign_list_ms": reverse("admin:campaigns_campaign_changelist"),
        "job_manager_ms": reverse("jobs:manager"),
    }
    for key, url in pages.items():
        ms = server_ms(client, url)
        results.put(key, ms)
        results.note(f"{key[:-3]}: {url or 'no such page'}: " + (f"{ms:.0f} ms" if ms else "n/a"))
    results.note(f"{ITEMS:,} items in the campaign, 20,000 job runs")
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
