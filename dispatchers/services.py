"""Dispatcher services."""

from __future__ import annotations

import socket

from jobs.services import notification_resolve

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
