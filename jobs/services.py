"""Job-run records: every beat job says when it ran, how long, how much."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import JobRun, Notification

logger = logging.getLogger(__name__)


def job_run_record(*, job: str, work: Callable[[], int]) -> int:
    """Run ``work`` (which returns how many items it processed) and keep a
    JobRun row of it. The row is written outside the work's transactions,
    so a failing job still leaves its record and its error."""
    run = JobRun.objects.create(
        job=job, started_at=timezone.now(), worker=f"{socket.gethostname()}:{os.getpid()}"
    )
    try:
        processed = work()
    except Exception as exc:
        run.outcome = JobRun.Outcome.FAILED
        run.error = f"{type(exc).__name__}: {exc}"[:5000]
        run.finished_at = timezone.now()
        run.save(update_fields=["outcome", "error", "finished_at"])
        raise
    run.outcome = JobRun.Outcome.OK
    run.items_processed = processed
    run.finished_at = timezone.now()
    run.save(update_fields=["outcome", "items_processed", "finished_at"])
    return processed


def notification_raise(*, key: str, title: str, message: str = "", level: str = "warning") -> None:
    """Raise (or repeat) the open notification for ``key``."""
    logger.warning("notification %s: %s", key, title)
    fields = {"title": title, "message": message, "level": level}
    open_one = Notification.objects.filter(key=key, resolved_at__isnull=True)
    if open_one.update(occurrences=F("occurrences") + 1, updated_at=timezone.now(), **fields):
        return
    try:
        with transaction.atomic():
            Notification.objects.create(key=key, **fields)
    except IntegrityError:  # raised by a concurrent caller meanwhile
        open_one.update(occurrences=F("occurrences") + 1, updated_at=timezone.now(), **fields)


def notification_resolve(*, key: str) -> None:
    Notification.objects.filter(key=key, resolved_at__isnull=True).update(
        resolved_at=timezone.now()
    )


def job_runs_prune(*, older_than: datetime) -> int:
    deleted, _ = JobRun.objects.filter(started_at__lt=older_than).delete()
    return deleted
