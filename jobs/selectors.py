"""What the job manager page reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from .models import Job, JobRun, Notification


@dataclass(frozen=True)
class JobSummary:
    job: str
    label: str
    last: JobRun | None
    recent_durations: list[float]
    failures_24h: int
    schedule: str
    enabled: bool

    @property
    def sparkline(self) -> str:
        return sparkline_points(self.recent_durations)


def jobs_summary(*, history: int = 30) -> list[JobSummary]:
    schedules = {t.task: t for t in PeriodicTask.objects.select_related("interval", "crontab")}
    for task in schedules.values():
        task.schedule_display = task.interval or task.crontab or task.solar or task.clocked
    summaries = []
    for job in Job:
        runs = list(JobRun.objects.filter(job=job.value).order_by("-started_at")[:history])
        failures = JobRun.objects.filter(
            job=job.value, started_at__gte=timezone.now() - timedelta(hours=24)
        ).aggregate(n=Count("id", filter=Q(outcome=JobRun.Outcome.FAILED)))["n"]
        task = schedules.get(job.value)
        summaries.append(
            JobSummary(
                job=job.value,
                label=job.label,
                last=runs[0] if runs else None,
                recent_durations=[r.duration for r in reversed(runs) if r.duration is not None],
                failures_24h=failures,
                schedule=str(task.schedule_display) if task else "on demand",
                enabled=task.enabled if task else True,
            )
        )
    return summaries


def sparkline_points(values: list[float], width: int = 120, height: int = 24) -> str:
    """SVG polyline points for a small duration chart (empty when no data)."""
    if not values:
        return ""
    top = max(values) or 1.0
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )


def notifications_open(*, limit: int = 20) -> list[Notification]:
    """What still needs someone's attention, newest first."""
    return list(Notification.objects.filter(resolved_at__isnull=True)[:limit])
