"""4. Claims: items claimed and marked per second, by 1 and by 4
concurrent claimer processes, on a campaign of BENCH_SCALE x 1,000,000
items drained to the end.

Herald: each claimer calls campaigns.services.batch_claim (the
process-messages job's claim: dispatcher lock, rate budget, SKIP LOCKED,
batch row, outbound task enqueued) for a dispatcher with batches of 500 and
no effective rate limit, then marks the batch's items sent and closes the
batch in one UPDATE each, as a bulk write-back would. Reference in the same
run: the bare keyset loop (UPDATE ... WHERE id IN (SELECT ... id > last
ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED) RETURNING id, then the same
marking UPDATE, plus a final sweep from the start). Each of the four runs
starts from freshly generated, vacuumed items.

Sag: the rate over the last quarter of the items divided by the rate over
the first quarter (1.0: no slowing down as the campaign drains).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from bench.common import Row, scaled

ROWS = [
    Row(
        figure="4. Claims, 1 claimer",
        unit="items/s",
        herald="herald_1",
        reference="bare_1",
        reference_label="bare keyset loop",
        target="(none set)",
    ),
    Row(
        figure="4. Claims, 4 claimers",
        unit="items/s",
        herald="herald_4",
        reference="bare_4",
        reference_label="bare keyset loop",
        target=">= 50,000/s and >= 0.5 x bare loop",
        met=lambda h, r: h >= 50_000 and r is not None and h >= 0.5 * r,
    ),
    Row(
        figure="4. Claims, 4 claimers: last-quarter / first-quarter rate",
        unit="",
        herald="herald_4_sag",
        reference="bare_4_sag",
        reference_label="bare keyset loop",
        target=">= 0.8 (no sag)",
        met=lambda h, r: h >= 0.8,
        digits=2,
    ),
]

ITEMS = scaled(1_000_000, minimum=10_000)
BATCH = 500

_CLAIM = """
UPDATE campaigns_campaignitem SET status = 'claimed'
WHERE id IN (
    SELECT id FROM campaigns_campaignitem
    WHERE campaign_id = %(campaign)s AND status = 'pending' AND id > %(after)s
    ORDER BY id LIMIT %(size)s FOR UPDATE SKIP LOCKED)
RETURNING id
"""
_MARK = "UPDATE campaigns_campaignitem SET status = 'sent', sent_at = now() WHERE id = ANY(%(ids)s)"


def bare_claimer(campaign_id: int, dispatcher_id: int) -> list[tuple[float, int]]:
    from bench.common import sql

    events = []
    after = 0
    while True:
        ids = [
            row[0] for row in sql(_CLAIM, {"campaign": campaign_id, "after": after, "size": BATCH})
        ]
        if not ids:
            if after == 0:
                return events
            after = 0  # the final sweep: what other claimers skipped while locked
            continue
        after = max(ids)
        sql(_MARK, {"ids": ids})
        events.append((time.time(), len(ids)))


def herald_claimer(campaign_id: int, dispatcher_id: int) -> list[tuple[float, int]]:
    from django.utils import timezone

    from campaigns.models import Batch, CampaignItem
    from campaigns.services import batch_claim

    S = CampaignItem.Status
    events = []
    while True:
        batch = batch_claim(dispatcher_id=dispatcher_id)
        if batch is None:
            if not CampaignItem.objects.filter(campaign_id=campaign_id, status=S.PENDING).exists():
                return events
            time.sleep(0.001)  # the rest is locked by another claimer right now
            continue
        now = timezone.now()
        CampaignItem.objects.filter(batch=batch, status=S.CLAIMED).update(
            status=S.SENT, sent_at=now
        )
        Batch.objects.filter(pk=batch.pk).update(started_at=now, finished_at=now)
        events.append((time.time(), batch.size))


def _child(kind: str, campaign_id: int, dispatcher_id: int, start: Any, out: Any) -> None:
    from django.db import connection

    claimer = bare_claimer if kind == "bare" else herald_claimer
    start.wait()
    try:
        out.put(claimer(campaign_id, dispatcher_id))
    finally:
        connection.close()


def drain(kind: str, claimers: int, campaign_id: int, dispatcher_id: int) -> tuple[float, float]:
    """(items/s, sag) of ``claimers`` processes draining the campaign."""
    from django.db import connections

    connections.close_all()  # each forked claimer opens its own
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    processes = [
        context.Process(target=_child, args=(kind, campaign_id, dispatcher_id, start, out))
        for _ in range(claimers)
    ]
    for p in processes:
        p.start()
    time.sleep(0.5)
    t0 = time.time()
    start.set()
    events = sorted(e for _ in processes for e in out.get(timeout=3600))
    for p in processes:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a {kind} claimer failed")
    total = sum(n for _, n in events)
    if total != ITEMS:
        raise RuntimeError(f"{kind}: {total} items claimed, expected {ITEMS}")
    done, t25, t75 = 0, None, None
    for t, n in events:
        done += n
        if t25 is None and done >= total / 4:
            t25 = t
        if t75 is None and done >= total * 3 / 4:
            t75 = t
    end = events[-1][0]
    sag = (t25 - t0) / (end - t75) if end > t75 else 1.0
    return total / (end - t0), sag


def main() -> None:
    from bench.common import Results, audience_create, queue_purge, sql, template_create, vacuum
    from campaigns.models import Campaign
    from campaigns.services import campaign_schedule, items_generate
    from dispatchers.models import Dispatcher

    results = Results()
    contact_list = audience_create(ITEMS)
    template = template_create()
    dispatcher = Dispatcher.objects.create(
        name="Bench claims",
        server_name="benchclaims",
        delivery_mode=Dispatcher.DeliveryMode.PICKUP,
        pickup_directory="/nonexistent",  # never sent: no worker consumes its queue
        from_email="news@herald.test",
        messages_per_hour=1_000_000_000,
        pacing=Dispatcher.Pacing.FAST,
        batch_size=BATCH,
    )
    try:
        for kind, claimers in (("bare", 1), ("bare", 4), ("herald", 1), ("herald", 4)):
            sql("TRUNCATE campaigns_campaignitem CASCADE")
            campaign = Campaign.objects.create(
                name=f"Bench {kind} {claimers}", template=template, dispatcher=dispatcher
            )
            campaign.lists.set([contact_list])
            campaign_schedule(campaign=campaign)
            items_generate()
            vacuum("campaigns_campaignitem", "campaigns_batch")
            rate, sag = drain(kind, claimers, campaign.pk, dispatcher.pk)
            Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.COMPLETED)
            results.put(f"{kind}_{claimers}", rate)
            results.put(f"{kind}_{claimers}_sag", sag)
            results.note(
                f"{kind}, {claimers} claimer(s): {ITEMS:,} items at {rate:,.0f}/s, "
                f"last quarter / first quarter {sag:.2f}"
            )
    finally:
        queue_purge(dispatcher.queue)
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
