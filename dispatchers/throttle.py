"""Per-provider throttling: each dispatcher's rate per mailbox provider.

A claim asks the plan how many items of each provider group it may still
take this minute (configured rate, cut down after a provider said "rate
limited", less what the ledger holds for the minute), and adds what it
took to the ledger in the same transaction, under the dispatcher's row
lock: the per-minute count is exact over every worker, as for the hourly
limit. A refusal halves the group's rate (at most once a minute, down to
a floor); every minute without one gives back a tenth of the configured
rate until it is whole again. Other groups are never slowed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from jobs.services import notification_raise, notification_resolve

from .models import (
    PROVIDER_RATE_DEFAULTS,
    Dispatcher,
    MailboxProvider,
    ProviderRate,
    ProviderThrottle,
    ProviderUsage,
)

MINUTE = timedelta(minutes=1)
RECOVERY = 0.10  # of the configured rate, regained per minute without a refusal
FLOOR = 0.10  # a provider is never slowed below this share of its rate (nor below 1)
RETENTION = timedelta(hours=1)  # how long the ledger keeps a minute
NAMED = {p.value for p in MailboxProvider if p != MailboxProvider.OTHER}


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def configured_rate(rates: dict[str, int], group: str) -> int | None:
    """The configured rate of a group: its provider's, or for a domain the
    rate of "any other domain". None: not throttled."""
    if not group:
        return None  # an item grouped before throttling existed
    return rates.get(group if group in NAMED else MailboxProvider.OTHER)


def effective_rate(configured: int, throttle: ProviderThrottle | None, now: datetime) -> int:
    """The rate now: the cut-down rate plus what each whole minute since
    the last refusal gave back, never above the configured rate."""
    if throttle is None or throttle.slowed_to is None or throttle.refused_at is None:
        return configured
    quiet = max((now - throttle.refused_at) // MINUTE, 0)
    step = max(1, round(configured * RECOVERY))
    return min(configured, throttle.slowed_to + step * quiet)


def provider_rates(*, dispatcher: Dispatcher) -> dict[str, int]:
    if dispatcher.type != Dispatcher.Type.EMAIL:
        return {}
    return dict(dispatcher.provider_rates.values_list("provider", "per_minute"))


@dataclass
class ProviderPlan:
    """What one claim may take of each group, and what it took."""

    rates: dict[str, int]
    throttles: dict[str, ProviderThrottle]
    used: dict[str, int]  # group -> claimed this minute, before this claim
    now: datetime
    taken: Counter[str] = field(default_factory=Counter)
    _limits: dict[str, int | None] = field(default_factory=dict)

    def limit(self, group: str) -> int | None:
        if group not in self._limits:
            configured = configured_rate(self.rates, group)
            self._limits[group] = (
                None
                if configured is None
                else effective_rate(configured, self.throttles.get(group), self.now)
            )
        return self._limits[group]

    def left(self, group: str) -> int | None:
        limit = self.limit(group)
        if limit is None:
            return None
        return limit - self.used.get(group, 0) - self.taken[group]

    def exhausted(self) -> list[str]:
        """Groups with nothing left this minute: the claim skips their items
        in SQL. Only groups already in the ledger can be."""
        seen = set(self.used) | set(self.taken)
        return sorted(g for g in seen if (left := self.left(g)) is not None and left <= 0)

    def admit(self, group: str) -> bool:
        left = self.left(group)
        if left is not None and left <= 0:
            return False
        self.taken[group] += 1
        return True


def provider_plan(*, dispatcher: Dispatcher, now: datetime) -> ProviderPlan | None:
    """The dispatcher's per-provider budgets for the minute of ``now``, or
    None when it has no per-provider rates (claims then stay as they were)."""
    rates = provider_rates(dispatcher=dispatcher)
    if not rates:
        return None
    throttles = {
        t.group: t for t in ProviderThrottle.objects.filter(dispatcher=dispatcher, slowed_to__gt=0)
    }
    for group, throttle in list(throttles.items()):
        configured = configured_rate(rates, group)
        if configured is None or effective_rate(configured, throttle, now) >= configured:
            _recovered(throttle)
            del throttles[group]
    used = dict(
        ProviderUsage.objects.filter(dispatcher=dispatcher, minute=_minute(now)).values_list(
            "group", "count"
        )
    )
    return ProviderPlan(rates=rates, throttles=throttles, used=used, now=now)


def _recovered(throttle: ProviderThrottle) -> None:
    ProviderThrottle.objects.filter(pk=throttle.pk).update(slowed_to=None)
    notification_resolve(key=_notification_key(throttle.dispatcher_id, throttle.group))


def provider_usage_spend(*, dispatcher: Dispatcher, taken: Counter[str], now: datetime) -> None:
    """Add a claim's per-group counts to the ledger, in one statement."""
    rows = [(g, n) for g, n in taken.items() if n > 0]
    if not rows:
        return
    values = ", ".join(["(%s, %s, %s, %s::integer)"] * len(rows))
    params: list[object] = []
    for group, count in rows:
        params += [dispatcher.pk, group, _minute(now), count]
    table = ProviderUsage._meta.db_table
    with connection.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {table} (dispatcher_id, "group", minute, count) VALUES {values}
            ON CONFLICT (dispatcher_id, minute, "group")
            DO UPDATE SET count = {table}.count + EXCLUDED.count""",
            params,
        )


def provider_usage_prune(*, now: datetime) -> int:
    deleted, _ = ProviderUsage.objects.filter(minute__lt=_minute(now) - RETENTION).delete()
    return deleted


def _notification_key(dispatcher_id: int, group: str) -> str:
    return f"dispatcher:{dispatcher_id}:throttled:{group}"


def group_label(group: str) -> str:
    return str(dict(MailboxProvider.choices).get(group, group))


def provider_throttle_record(
    *, dispatcher: Dispatcher, group: str, reply: str, claimed_at: datetime
) -> int | None:
    """A provider refused messages of a batch claimed at ``claimed_at``
    as sent too fast: halve its rate, unless it was halved less than a
    minute before that claim (those messages left at a pace set before
    the last cut). Returns the new rate when it was halved."""
    configured = configured_rate(provider_rates(dispatcher=dispatcher), group)
    if configured is None:
        return None
    ProviderThrottle.objects.get_or_create(dispatcher=dispatcher, group=group)
    with transaction.atomic():
        throttle = ProviderThrottle.objects.select_for_update().get(
            dispatcher=dispatcher, group=group
        )
        current = effective_rate(configured, throttle, claimed_at)
        halve = throttle.slowed_at is None or claimed_at >= throttle.slowed_at + MINUTE
        if halve:
            throttle.slowed_to = max(round(configured * FLOOR), 1, current // 2)
            throttle.slowed_at = claimed_at
        throttle.refused_at = max(throttle.refused_at or claimed_at, claimed_at)
        throttle.refusals += 1
        throttle.reply = reply[:500]
        throttle.save()
    if not halve:
        return None
    notification_raise(
        key=_notification_key(dispatcher.pk, group),
        title=f"{group_label(group)} is slowing down dispatcher {dispatcher.name}",
        message=f"It answered “{reply[:300]}”: Herald now sends it at most "
        f"{throttle.slowed_to} a minute (of {configured}) and speeds up again by itself "
        "while it stops refusing. The refused messages are tried again in a minute.",
        level="warning",
        link=f"/admin/dispatchers/dispatcher/{dispatcher.pk}/change/",
    )
    return throttle.slowed_to


@dataclass(frozen=True)
class ProviderRateStatus:
    group: str
    label: str
    configured: int
    effective: int
    sent_this_minute: int
    sent_last_hour: int
    slowed_at: datetime | None
    reply: str
    refusals: int


def provider_rates_status(
    *, dispatcher: Dispatcher, now: datetime | None = None
) -> list[ProviderRateStatus]:
    """Each provider's configured and current rate, what was sent to it,
    and when and why it last slowed down; then every domain that slowed
    down in the last day (each its own group)."""
    now = now or timezone.now()
    rates = provider_rates(dispatcher=dispatcher)
    throttles = {t.group: t for t in ProviderThrottle.objects.filter(dispatcher=dispatcher)}
    usage = ProviderUsage.objects.filter(dispatcher=dispatcher, minute__gt=_minute(now) - RETENTION)
    this_minute: Counter[str] = Counter()
    last_hour: Counter[str] = Counter()
    for group, minute, count in usage.values_list("group", "minute", "count"):
        # A domain counts for itself and towards "any other domain".
        keys = {group, group if group in NAMED else MailboxProvider.OTHER}
        for key in keys:
            last_hour[key] += count
            if minute == _minute(now):
                this_minute[key] += count
    groups = list(rates)
    groups += sorted(
        g
        for g, t in throttles.items()
        if g not in NAMED
        and g != MailboxProvider.OTHER
        and t.refused_at
        and t.refused_at > now - timedelta(days=1)
    )
    statuses = []
    for group in groups:
        configured = configured_rate(rates, group)
        if configured is None:
            continue
        throttle = throttles.get(group)
        statuses.append(
            ProviderRateStatus(
                group=group,
                label=group_label(group),
                configured=configured,
                effective=effective_rate(configured, throttle, now),
                sent_this_minute=this_minute[group],
                sent_last_hour=last_hour[group],
                slowed_at=throttle.slowed_at if throttle else None,
                reply=throttle.reply if throttle else "",
                refusals=throttle.refusals if throttle else 0,
            )
        )
    return statuses


def provider_rates_default(*, dispatcher: Dispatcher) -> int:
    """Give a new dispatcher that talks SMTP itself (relay or direct) the
    default rates it has no row for."""
    if dispatcher.type != Dispatcher.Type.EMAIL or dispatcher.delivery_mode not in (
        Dispatcher.DeliveryMode.SMTP,
        Dispatcher.DeliveryMode.DIRECT,
    ):
        return 0  # an email service paces by itself; the local outbox sends nothing
    have = set(dispatcher.provider_rates.values_list("provider", flat=True))
    rows = [
        ProviderRate(dispatcher=dispatcher, provider=provider, per_minute=rate)
        for provider, rate in PROVIDER_RATE_DEFAULTS.items()
        if provider not in have
    ]
    return len(ProviderRate.objects.bulk_create(rows))
