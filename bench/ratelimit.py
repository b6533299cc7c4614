"""5. Rate-limit accuracy: 4 worker processes share a dispatcher limited to
36,000 messages an hour (spread over the hour, the default pacing), with a
backlog far larger than the limit, for BENCH_RATE_MINUTES of compressed time
(default 10, times BENCH_SCALE, at least 3).

Compressed time: batch_claim takes the moment it claims at (``now``), and
the limit is enforced there, in the claim's transaction. Each of the 4
processes loops: claim a batch (campaigns.services.batch_claim) at the
shared virtual clock, which runs BENCH_RATE_SPEEDUP (default 2) times faster
than the real one, then send it for real (campaigns.services.batch_send,
to smtp-sink). What each claim handed out, and when (virtual time), is
recorded by the processes themselves, not read back from Herald's ledger.

Overshoot: the most messages above the allowance in any rolling window of
d = 1..60 minutes, starting at any claim (allowance: the hourly limit, and
for spread pacing ceil(limit x d / 60)); 0 is exact. The same on whole
calendar minutes, the unit of Herald's usage ledger, as a second row: a
rolling window straddling two minutes can hold the tail of one minute's
share and the head of the next. (The hourly limit itself cannot be
exceeded in a 10-minute run at 600 a minute.) Utilisation: messages
claimed during the run / what the limit allows in that time.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from datetime import datetime, timedelta
from typing import Any

from bench.common import Row, scale

ROWS = [
    Row(
        figure="5. Rate limit: overshoot of 36,000/h in any rolling hour (4 processes)",
        unit="msg",
        herald="hour_overshoot",
        target="0",
        met=lambda h, r: h == 0,
    ),
    Row(
        figure="5. Spreading: overshoot of the per-minute share in whole minutes (the ledger's)",
        unit="msg",
        herald="ledger_overshoot",
        target="0",
        met=lambda h, r: h == 0,
    ),
    # Spreading is kept per ledger minute: a rolling minute straddling two
    # of them may hold the tail of one share and the head of the next.
    # Shown, with no target: the hourly limit is the promise.
    Row(
        figure="5. Spreading: overshoot of the share in rolling sub-hour windows",
        unit="msg",
        herald="overshoot",
        target="(none set)",
        met=None,
    ),
    Row(
        figure="5. Rate limit: utilisation with backlog",
        unit="%",
        herald="utilisation",
        target=">= 95%",
        met=lambda h, r: h >= 95,
        digits=1,
    ),
]

LIMIT = 36_000
PROCESSES = 4
MINUTES = max(3, round(int(os.environ.get("BENCH_RATE_MINUTES") or 10) * min(scale(), 1.0)))
SPEEDUP = float(os.environ.get("BENCH_RATE_SPEEDUP") or 2)


class Clock:
    """Virtual time shared by the processes: ``start`` at real ``origin``,
    running SPEEDUP times faster."""

    def __init__(self, start: datetime, origin: float) -> None:
        self.start, self.origin = start, origin

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.origin) * SPEEDUP)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=MINUTES)


def worker(dispatcher_id: int, clock: Clock, out: Any) -> None:
    from django.db import connection

    from campaigns.services import batch_claim, batch_send

    events: list[tuple[float, int]] = []
    time.sleep(max(clock.origin - time.time(), 0))
    try:
        while (now := clock.now()) < clock.end:
            batch = batch_claim(dispatcher_id=dispatcher_id, now=now)
            if batch is None:
                time.sleep(0.02)
                continue
            events.append(((now - clock.start).total_seconds(), batch.size))
            batch_send(batch_id=batch.pk)
    finally:
        out.put(events)
        connection.close()


def overshoot(events: list[tuple[float, int]], *, spread: bool) -> int:
    """The most messages over the allowance in any window [t, t + d min)
    starting at a claim, for d = 1..60 minutes."""
    worst = 0
    for d in range(1, 61):
        allowance = min(LIMIT, math.ceil(LIMIT * d / 60)) if spread else LIMIT
        width, total, j = d * 60, 0, 0
        for i, (start, _) in enumerate(events):
            while j < len(events) and events[j][0] < start + width:
                total += events[j][1]
                j += 1
            worst = max(worst, total - allowance)
            total -= events[i][1]
    return worst


def ledger_overshoot(events: list[tuple[float, int]]) -> int:
    """The same on the ledger's own terms: whole calendar minutes."""
    minutes: dict[int, int] = {}
    for t, n in events:
        minutes[int(t // 60)] = minutes.get(int(t // 60), 0) + n
    worst = 0
    for first in minutes:
        for d in range(1, 61):
            total = sum(minutes.get(first + k, 0) for k in range(d))
            worst = max(worst, total - min(LIMIT, math.ceil(LIMIT * d / 60)))
    return worst


def main() -> None:
    from django.db import connections
    from django.utils import timezone

    from bench.common import Results, Sink, audience_create, queue_purge, template_create
    from campaigns.models import Campaign, CampaignItem
    from campaigns.services import campaign_schedule, items_generate
    from dispatchers.models import Dispatcher
    from smtpservers.models import SmtpServer

    results = Results()
    allowed = LIMIT * MINUTES // 60
    sink = Sink()
    dispatcher = None
    try:
        contact_list = audience_create(allowed * 2)
        dispatcher = Dispatcher.objects.create(
            name="Bench 36000/h",
            server_name="benchrate",
            delivery_mode=Dispatcher.DeliveryMode.SMTP,
            smtp_server=SmtpServer.objects.create(
                name="smtp-sink", host="127.0.0.1", port=sink.port, timeout=30
            ),
            from_email="news@herald.test",
            messages_per_hour=LIMIT,
            pacing=Dispatcher.Pacing.SPREAD,
            batch_size=100,
            connections=2,
        )
        campaign = Campaign.objects.create(
            name="Bench rate", template=template_create(), dispatcher=dispatcher
        )
        campaign.lists.set([contact_list])
        campaign_schedule(campaign=campaign)
        items_generate()

        connections.close_all()
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        start = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
        clock = Clock(start, time.time() + 1.0)
        processes = [
            context.Process(target=worker, args=(dispatcher.pk, clock, out))
            for _ in range(PROCESSES)
        ]
        for p in processes:
            p.start()
        events = sorted(e for _ in processes for e in out.get(timeout=MINUTES * 60 + 600))
        for p in processes:
            p.join()
        claimed = sum(n for _, n in events)
        sent = CampaignItem.objects.filter(
            campaign=campaign, status=CampaignItem.Status.SENT
        ).count()
        over = max(overshoot(events, spread=True), 0)
        results.put("overshoot", over)
        results.put("hour_overshoot", max(overshoot(events, spread=False), 0))
        results.put("ledger_overshoot", ledger_overshoot(events))
        results.put("utilisation", 100 * claimed / allowed)
        per_minute = [0] * MINUTES
        for t, n in events:
            per_minute[min(int(t // 60), MINUTES - 1)] += n
        results.note(
            f"{MINUTES} virtual minutes at x{SPEEDUP:g}: {claimed:,} claimed of {allowed:,} "
            f"allowed ({sent:,} sent); per minute {per_minute}; rolling-window overshoot {over}, "
            f"on whole calendar minutes {ledger_overshoot(events)}"
        )
    finally:
        if dispatcher is not None:
            queue_purge(dispatcher.queue)
        sink.stop()
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
