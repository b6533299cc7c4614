"""Job-run records: every beat job says when it ran, how long, how much."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from kombu.exceptions import OperationalError

from .models import ON_DEMAND_ONLY, Job, JobAction, JobRun, Notification, SupportToken

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
        job_failures_check(job=job)
        raise
    run.outcome = JobRun.Outcome.OK
    run.items_processed = processed
    run.finished_at = timezone.now()
    run.save(update_fields=["outcome", "items_processed", "finished_at"])
    notification_resolve(key=failing_key(job))
    return processed


def notification_raise(
    *, key: str, title: str, message: str = "", level: str = "warning", link: str = ""
) -> None:
    """Raise (or repeat) the open notification for ``key``; ``link`` is the
    path of the object to look at."""
    logger.warning("notification %s: %s", key, title)
    fields = {"title": title, "message": message, "level": level, "link": link}
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


# --- health: jobs that keep failing or run far longer than usual ------------


def failing_key(job: str) -> str:
    return f"job:{job}:failing"


def slow_key(job: str) -> str:
    return f"job:{job}:slow"


def max_failures() -> int:
    return settings.HERALD_JOB_MAX_FAILURES


def job_failures_check(*, job: str) -> bool:
    """Raise the job's notification when its last runs all failed."""
    from .selectors import job_consecutive_failures  # selectors read, services write

    failures = job_consecutive_failures(job=job, limit=max_failures())
    if failures < max_failures():
        return False
    last = JobRun.objects.filter(job=job, outcome=JobRun.Outcome.FAILED).first()
    notification_raise(
        key=failing_key(job),
        title=f"Job {Job(job).label} failed {failures} times in a row",
        message=f"Last error: {last.error if last else 'unknown'}",
        level=Notification.Level.ERROR,
    )
    return True


def jobs_check() -> int:
    """The check-jobs job: raise a notification for each job that runs far
    longer than usual or keeps failing, resolve the ones that recovered.
    Returns how many jobs are flagged."""
    from .selectors import job_health

    flagged = 0
    for job in Job:
        health = job_health(job=job.value)
        if health.slow_run is not None:
            flagged += 1
            run = health.slow_run
            notification_raise(
                key=slow_key(job.value),
                title=f"Job {job.label} has been running for {health.slow_seconds:.0f} s",
                message=f"Usually {health.median:.1f} s; started {run.started_at:%H:%M:%S} "
                f"on {run.worker or 'an unknown worker'}.",
            )
        else:
            notification_resolve(key=slow_key(job.value))
        if health.failures >= max_failures():
            flagged += 1
            job_failures_check(job=job.value)
        else:
            notification_resolve(key=failing_key(job.value))
    return flagged


# --- what people do from the job manager -------------------------------------


def job_action_record(
    *, user: AbstractBaseUser, action: str, target: str, detail: str = ""
) -> JobAction:
    return JobAction.objects.create(
        user=user,
        username=user.get_username(),
        action=action,
        target=target[:200],
        detail=detail[:500],
    )


def job_periodic_task(*, job: str) -> PeriodicTask | None:
    """The beat schedule of a job (the oldest, should someone add another)."""
    return PeriodicTask.objects.filter(task=job).order_by("id").first()


# A person waits for run-now: one quick retry, then say the broker is down.
SEND_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def job_run_now(*, job: Job, user: AbstractBaseUser) -> JobAction:
    """Send the job's task to the workers once the request commits, on the
    queue its beat schedule uses."""
    if job in ON_DEMAND_ONLY:
        raise ValidationError(f"{job.label} runs for each batch; it cannot be run by hand.")
    task = job_periodic_task(job=job.value)
    queue = (task.queue if task is not None else None) or None
    action = job_action_record(user=user, action=JobAction.Action.RUN_NOW, target=job.label)

    def send() -> None:
        try:
            with current_app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
                current_app.send_task(
                    job.value, queue=queue, retry_policy=SEND_RETRY, connection=conn
                )
        except OperationalError as exc:
            # The audit keeps the attempt; the caller tells the user.
            JobAction.objects.filter(pk=action.pk).update(detail=f"not sent: {exc}"[:500])
            raise

    transaction.on_commit(send)
    return action


def _describe(task: PeriodicTask | None) -> str:
    if task is None:
        return "on demand"
    state = "enabled" if task.enabled else "disabled"
    return f"{task.scheduler}, {state}"


def job_schedule_change(
    *, job: Job, every_seconds: int, enabled: bool, user: AbstractBaseUser
) -> JobAction | None:
    """Set how often beat runs the job and whether it runs at all. Returns
    the audit row, or None when nothing changed."""
    if job in ON_DEMAND_ONLY:
        raise ValidationError(f"{job.label} runs for each batch; it has no schedule.")
    every, _ = IntervalSchedule.objects.get_or_create(
        every=every_seconds, period=IntervalSchedule.SECONDS
    )
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().filter(task=job.value).order_by("id")
        task = task.first()
        before = _describe(task)
        if task is None:
            task = PeriodicTask(name=job.label, task=job.value)
        if task.interval_id == every.pk and task.enabled == enabled and task.pk:
            return None
        task.interval = every
        task.crontab = task.solar = task.clocked = None
        task.enabled = enabled
        # As the beat schedules are made: a queued run expires after two
        # intervals, as a backlog of the same job would repeat the same work.
        task.expires = None
        task.expire_seconds = every_seconds * 2
        task.save()  # save(), not update(): it tells beat the schedule changed
        return job_action_record(
            user=user,
            action=JobAction.Action.SCHEDULE,
            target=job.label,
            detail=f"{before} -> {_describe(task)}",
        )


def dispatcher_pause_by_hand(*, dispatcher_id: int, user: AbstractBaseUser, reason: str) -> bool:
    from dispatchers.models import Dispatcher  # dispatchers import this module
    from dispatchers.services import dispatcher_pause

    dispatcher = Dispatcher.objects.get(pk=dispatcher_id)
    reason = reason.strip() or f"Paused by {user.get_username()} from the job manager"
    with transaction.atomic():
        if not dispatcher_pause(dispatcher=dispatcher, reason=reason):
            return False
        job_action_record(
            user=user,
            action=JobAction.Action.PAUSE_DISPATCHER,
            target=dispatcher.name,
            detail=reason,
        )
    return True


def dispatcher_resume_by_hand(*, dispatcher_id: int, user: AbstractBaseUser) -> bool:
    from dispatchers.models import Dispatcher
    from dispatchers.services import dispatcher_resume

    dispatcher = Dispatcher.objects.get(pk=dispatcher_id)
    with transaction.atomic():
        if not dispatcher_resume(dispatcher=dispatcher):
            return False
        job_action_record(
            user=user,
            action=JobAction.Action.RESUME_DISPATCHER,
            target=dispatcher.name,
            detail=f"was paused: {dispatcher.paused_reason}" if dispatcher.paused_reason else "",
        )
    return True


# --- troubleshooting tokens ---------------------------------------------------

SUPPORT_PREFIX_LENGTH = 8


def support_token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def support_token_create(*, name: str, user: AbstractBaseUser | None) -> tuple[SupportToken, str]:
    """A new token and its raw value, which is never stored: the caller
    shows it once."""
    raw = "hts_" + secrets.token_urlsafe(32)
    token = SupportToken.objects.create(
        name=name,
        prefix=raw[:SUPPORT_PREFIX_LENGTH],
        key_hash=support_token_hash(raw),
        created_by=user,
    )
    return token, raw


def support_token_revoke(*, token: SupportToken) -> bool:
    revoked = SupportToken.objects.filter(pk=token.pk, revoked_at__isnull=True)
    return revoked.update(revoked_at=timezone.now()) == 1


def support_token_authenticate(*, raw: str) -> SupportToken | None:
    """The live token with this value, or None (unknown or revoked)."""
    token = SupportToken.objects.filter(
        key_hash=support_token_hash(raw), revoked_at__isnull=True
    ).first()
    if token is None:
        return None
    # At most one write a minute: the admin shows "last used", and a
    # polling support script should not rewrite the row every time.
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        SupportToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
