"""Exact hourly limits: a per-minute usage ledger per dispatcher.

Callers reserve inside the transaction that claims the work, with the
dispatcher row locked (``select_for_update``), so two workers can never
both spend the same budget: the sum over any 60-minute window never
exceeds ``messages_per_hour``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import F, Sum, Value
from django.db.models.functions import Greatest

from .models import Dispatcher, RateUsage

WINDOW = timedelta(hours=1)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def rate_budget(*, dispatcher: Dispatcher, now: datetime) -> int:
    """Messages the dispatcher may still reserve in the window ending now."""
    used = (
        RateUsage.objects.filter(dispatcher=dispatcher, minute__gt=_minute(now) - WINDOW).aggregate(
            total=Sum("count")
        )["total"]
        or 0
    )
    return max(dispatcher.messages_per_hour - used, 0)


def rate_spend(*, dispatcher: Dispatcher, count: int, now: datetime) -> None:
    if count <= 0:
        return
    row, created = RateUsage.objects.get_or_create(
        dispatcher=dispatcher, minute=_minute(now), defaults={"count": count}
    )
    if not created:
        RateUsage.objects.filter(pk=row.pk).update(count=F("count") + count)


def rate_refund(*, dispatcher_id: int, count: int, spent_at: datetime) -> None:
    """Give back reservations that were never sent (released items)."""
    if count <= 0:
        return
    RateUsage.objects.filter(dispatcher_id=dispatcher_id, minute=_minute(spent_at)).update(
        count=Greatest(F("count") - count, Value(0))
    )


def rate_usage_prune(*, now: datetime) -> int:
    deleted, _ = RateUsage.objects.filter(minute__lte=_minute(now) - WINDOW).delete()
    return deleted
