"""Exact hourly limits: a per-minute usage ledger per dispatcher.

Callers reserve inside the transaction that claims the work, with the
dispatcher row locked (``select_for_update``), so two workers can never
both spend the same budget: the sum over any 60-minute window never
exceeds ``messages_per_hour``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.db.models import F, Sum, Value
from django.db.models.functions import Greatest

from .models import Dispatcher, RateUsage

WINDOW = timedelta(hours=1)
DAY = timedelta(hours=24)
# How long the ledger is kept: the daily limit and block pacing look back
# this far; the hourly limit only 60 minutes.
RETENTION = DAY


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def rate_clock(*, dispatcher: Dispatcher, now: datetime) -> datetime:
    """``now``, or the latest minute the ledger has already spent in if that
    is later: the ledger's clock never runs backwards.

    A claimer takes its time before it waits for the dispatcher lock; when
    another claimer spent in the next minute meanwhile, spending in the
    earlier one would shorten a block's pause or a window behind the other's
    back. Call with the dispatcher row locked."""
    latest = (
        RateUsage.objects.filter(dispatcher=dispatcher, minute__gt=_minute(now))
        .order_by("-minute")
        .values_list("minute", flat=True)
        .first()
    )
    return latest if latest is not None else now


def rate_budget(*, dispatcher: Dispatcher, now: datetime) -> int:
    """Messages the dispatcher may still reserve in the window ending now.

    The hourly limit is exact: the last 60 minutes never hold more than
    ``messages_per_hour``. Spreading pacing also caps every shorter
    stretch: the last d minutes (d = 1..60) hold at most
    ceil(messages_per_hour * d / 60), so 600 an hour is 10 a minute and
    12 an hour is one every 5 minutes. There is no burst of a whole
    batch: it would spend a small limit in its first minutes, the very
    thing spreading prevents."""
    current = _minute(now)
    # The ledger counts by whole minutes, so the rolling hour ending now can
    # still hold the end of the minute that began 60 minutes ago: that
    # minute is counted too, or a window straddling it could pass the limit.
    spent = dict(
        RateUsage.objects.filter(dispatcher=dispatcher, minute__gte=current - WINDOW).values_list(
            "minute", "count"
        )
    )
    budget = dispatcher.messages_per_hour - sum(spent.values())
    if dispatcher.pacing == Dispatcher.Pacing.SPREAD:
        budget = min(budget, _spread_budget(dispatcher.messages_per_hour, spent, current))
    if dispatcher.pacing == Dispatcher.Pacing.BLOCKS and dispatcher.block_size:
        budget = min(budget, _block_budget(dispatcher, current))
    daily = _daily_cap(dispatcher, now)
    if daily is not None:
        budget = min(budget, daily - _spent_since(dispatcher, current - DAY))
    return max(budget, 0)


def _daily_cap(dispatcher: Dispatcher, now: datetime) -> int | None:
    """The tighter of the daily limit and the warm-up's cap for today."""
    caps = [dispatcher.messages_per_day, dispatcher.warmup_cap(now.date())]
    present = [cap for cap in caps if cap is not None]
    return min(present) if present else None


def _spent_since(dispatcher: Dispatcher, start: datetime) -> int:
    # From the minute ``start`` falls in: a rolling day can hold part of it.
    return (
        RateUsage.objects.filter(dispatcher=dispatcher, minute__gte=start).aggregate(
            total=Sum("count")
        )["total"]
        or 0
    )


def _block_budget(dispatcher: Dispatcher, current: datetime) -> int:
    """What is left of the current block. A block is a run of minutes with
    sends and no gap as long as the pause; once it holds ``block_size``,
    nothing more until the pause has passed since its last send."""
    size = dispatcher.block_size or 0
    pause = timedelta(minutes=dispatcher.block_pause_minutes or 0)
    rows = RateUsage.objects.filter(
        dispatcher=dispatcher, minute__gt=current - RETENTION, count__gt=0
    ).order_by("-minute")
    in_block = 0
    later = current
    for minute, count in rows.values_list("minute", "count").iterator():
        if later - minute >= pause:
            break  # a gap as long as the pause: an earlier block
        in_block += count
        later = minute
        if in_block >= size:
            return 0  # full: wait until the pause has passed since ``later``
    return size - in_block


def _spread_budget(per_hour: int, spent: dict[datetime, int], current: datetime) -> int:
    minutes = WINDOW // timedelta(minutes=1)
    used = 0
    budget = per_hour
    for back in range(minutes):
        used += spent.get(current - timedelta(minutes=back), 0)
        share = -(-per_hour * (back + 1) // minutes)  # ceiling, in integers
        budget = min(budget, share - used)
    return budget


def rate_spend(*, dispatcher: Dispatcher, count: int, now: datetime) -> None:
    if count <= 0:
        return
    # One statement, not a read then a write: it runs with the dispatcher
    # locked, where every claimer waits for every other.
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {RateUsage._meta.db_table} AS u (dispatcher_id, minute, count) "
            "VALUES (%s, %s, %s) ON CONFLICT (dispatcher_id, minute) "
            "DO UPDATE SET count = u.count + EXCLUDED.count",
            [dispatcher.pk, _minute(now), count],
        )


def rate_refund(*, dispatcher_id: int, count: int, spent_at: datetime) -> None:
    """Give back reservations that were never sent (released items)."""
    if count <= 0:
        return
    RateUsage.objects.filter(dispatcher_id=dispatcher_id, minute=_minute(spent_at)).update(
        count=Greatest(F("count") - count, Value(0))
    )


def rate_usage_prune(*, now: datetime) -> int:
    deleted, _ = RateUsage.objects.filter(minute__lt=_minute(now) - RETENTION).delete()
    return deleted
