"""Reads for the dispatcher pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Sum
from django.utils import timezone

from .models import Dispatcher, DispatcherPool, PoolMember, RateUsage
from .ratelimit import WINDOW, rate_budget


@dataclass(frozen=True)
class MemberStatus:
    member: PoolMember
    sent_last_hour: int
    budget: int
    share: float  # of the pool's messages in the last hour, 0..1
    health: str
    healthy: bool


@dataclass(frozen=True)
class DispatcherState:
    badge: str  # ok, paused, failed
    label: str
    why: str

    @property
    def sending(self) -> bool:
        return self.badge == "ok"


def dispatcher_state(*, dispatcher: Dispatcher, now: datetime | None = None) -> DispatcherState:
    """Whether a dispatcher can send now, and if not why: paused, blocked
    (e.g. an inactive SMTP server), or out of its pool's rotation."""
    now = now or timezone.now()
    if not dispatcher.is_enabled:
        return DispatcherState("paused", "Paused", dispatcher.paused_reason)
    if dispatcher.blocked_reason:
        return DispatcherState("failed", "Cannot send", dispatcher.blocked_reason)
    if dispatcher.retry_after is not None and dispatcher.retry_after > now:
        until = timezone.localtime(dispatcher.retry_after).strftime("%H:%M:%S")
        return DispatcherState("failed", f"Out of rotation until {until}", dispatcher.last_error)
    return DispatcherState("ok", "Enabled", dispatcher.last_error)


def _health(member: PoolMember, now: datetime) -> tuple[str, bool]:
    state = dispatcher_state(dispatcher=member.dispatcher, now=now)
    if state.sending:
        return "In rotation", True
    return f"{state.label}: {state.why}", False


def pool_members_status(*, pool: DispatcherPool, now: datetime | None = None) -> list[MemberStatus]:
    """Each member's share, remaining budget and health, as the pool page shows them."""
    now = now or timezone.now()
    members = list(pool.members.select_related("dispatcher__smtp_server"))
    start = now.replace(second=0, microsecond=0) - WINDOW
    sent = dict(
        RateUsage.objects.filter(
            dispatcher__in=[m.dispatcher_id for m in members], minute__gt=start
        )
        .values("dispatcher")
        .annotate(total=Sum("count"))
        .values_list("dispatcher", "total")
    )
    pool_total = sum(sent.values()) or 0
    statuses = []
    for member in members:
        mine = sent.get(member.dispatcher_id, 0)
        health, healthy = _health(member, now)
        statuses.append(
            MemberStatus(
                member=member,
                sent_last_hour=mine,
                budget=rate_budget(dispatcher=member.dispatcher, now=now),
                share=mine / pool_total if pool_total else 0.0,
                health=health,
                healthy=healthy,
            )
        )
    return statuses
