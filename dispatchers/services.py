"""Dispatcher services."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from jobs.services import notification_resolve
from smtpservers.services import connection_test

from .models import Dispatcher

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
