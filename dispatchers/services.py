"""Dispatcher services."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from jobs.services import notification_raise, notification_resolve
from smtpservers.services import connection_test

from .models import Dispatcher, PoolMember

LOCAL_OUTBOX = "Local outbox"


def local_server_name() -> str:
    """This computer's plain name (no domain), as dispatchers record it."""
    return socket.gethostname().split(".")[0] or "localhost"


def dispatcher_ensure_local_outbox(*, directory: str) -> Dispatcher:
    """The dispatcher `make run` offers out of the box: mail lands as .eml
    files on this computer, so a first campaign needs no mail server."""
    dispatcher, _ = Dispatcher.objects.get_or_create(
        name=LOCAL_OUTBOX,
        defaults={
            "server_name": local_server_name(),
            "type": Dispatcher.Type.EMAIL,
            "delivery_mode": Dispatcher.DeliveryMode.PICKUP,
            "pickup_directory": directory,
            "from_email": "herald@localhost.localdomain",
            "from_name": "Herald",
            "messages_per_hour": 36000,
            "batch_size": 100,
        },
    )
    return dispatcher


def dispatcher_pause(*, dispatcher: Dispatcher, reason: str) -> bool:
    return (
        Dispatcher.objects.filter(pk=dispatcher.pk, is_enabled=True).update(
            is_enabled=False, paused_reason=reason[:255]
        )
        == 1
    )


def dispatcher_resume(*, dispatcher: Dispatcher) -> bool:
    resumed = (
        Dispatcher.objects.filter(pk=dispatcher.pk, is_enabled=False).update(
            is_enabled=True, paused_reason="", consecutive_failures=0
        )
        == 1
    )
    if resumed:
        notification_resolve(key=f"dispatcher:{dispatcher.pk}:paused")
    return resumed


def pool_backoff(failures: int) -> timedelta:
    """How long a failed pool member stays out: doubling from the first
    delay with each failure in a row, up to the cap."""
    first = settings.HERALD_POOL_BACKOFF_SECONDS
    seconds = min(first * 2 ** max(failures - 1, 0), settings.HERALD_POOL_BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds)


def pool_member_fail(*, dispatcher: Dispatcher, error: str, now: datetime | None = None) -> bool:
    """Take a failed pool member out of rotation for its back-off, and say
    so; False when the dispatcher is in no pool (it is paused instead)."""
    memberships = PoolMember.objects.filter(dispatcher=dispatcher)
    if not memberships.exists():
        return False
    now = now or timezone.now()
    delay = pool_backoff(dispatcher.consecutive_failures)
    Dispatcher.objects.filter(pk=dispatcher.pk).update(retry_after=now + delay)
    pool_member_record_failover(dispatcher=dispatcher, reason=error, now=now)
    notification_raise(
        key=f"dispatcher:{dispatcher.pk}:failover",
        title=f"Dispatcher {dispatcher.name} is out of its pool's rotation",
        message=f"{error} Its unsent items went back to the pool for the other members; "
        f"it is tried again in {int(delay.total_seconds())} seconds.",
        level="warning",
    )
    return True


def pool_member_record_failover(
    *, dispatcher: Dispatcher, reason: str, now: datetime | None = None
) -> int:
    """Note on each of the dispatcher's memberships why it left the rotation."""
    return PoolMember.objects.filter(dispatcher=dispatcher).update(
        last_failover_at=now or timezone.now(), last_failover_reason=reason[:500]
    )


@dataclass(frozen=True)
class ConnectionReport:
    ok: bool | None  # None: this mode or provider cannot be checked
    message: str


def dispatcher_connection_test(*, dispatcher: Dispatcher) -> ConnectionReport:
    """What "Test connection" shows: whether the relay, or the email
    service's API key, works, as far as can be told without sending."""
    mode = dispatcher.delivery_mode
    if mode == Dispatcher.DeliveryMode.API:
        from .transports.esp import api_key_check

        ok, message = api_key_check(dispatcher)
        return ConnectionReport(ok, message)
    if mode == Dispatcher.DeliveryMode.SMTP and dispatcher.smtp_server is not None:
        report = connection_test(server=dispatcher.smtp_server)
        return ConnectionReport(report.ok, report.message)
    if mode == Dispatcher.DeliveryMode.DIRECT:
        return ConnectionReport(
            None,
            "Direct delivery connects to each recipient's own mail server; there is no "
            "single server to test.",
        )
    return ConnectionReport(None, "The local outbox writes files; there is nothing to connect to.")
