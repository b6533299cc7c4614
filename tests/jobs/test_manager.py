"""The job manager page: what each role sees and may do, run now, schedule
changes, and jobs flagged as slow or failing."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from jobs.models import Job, JobAction, JobRun, Notification
from jobs.selectors import jobs_summary
from jobs.services import failing_key, job_run_record, jobs_check, slow_key

from .conftest import Login

pytestmark = pytest.mark.django_db


def periodic(job: Job) -> PeriodicTask:
    return PeriodicTask.objects.filter(task=job.value).order_by("id").first()


# --- the page ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [(MARKETER, 403), (OPERATOR, 200), (ADMINISTRATOR, 200)]
)
def test_the_page_for_each_role(role: str, status: int, login: Login) -> None:
    response = login(role).get(reverse("jobs:manager"))
    assert response.status_code == status
    if status == 200:
        html = response.content.decode()
        for job in Job:
            assert job.label in html
        assert 'data-live-url="/jobs/live/"' in html


def test_anonymous_users_are_sent_to_log_in(client) -> None:
    for url in (reverse("jobs:manager"), reverse("jobs:live"), reverse("jobs:history")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_each_job_has_one_row_with_its_schedule(login: Login) -> None:
    summaries = {s.job: s for s in jobs_summary()}
    assert set(summaries) == set(Job.values)
    assert summaries[Job.PROCESS_OUTBOUND].schedule == "on demand"
    assert summaries[Job.PROCESS_OUTBOUND].on_demand_only
    assert summaries[Job.GENERATE_ITEMS].every_seconds == 5
    assert summaries[Job.CHECK_JOBS].every_seconds == 30  # its own beat schedule
    assert summaries[Job.HOUSEKEEPING].every_seconds == 3600


def test_the_next_run_follows_the_last_one_by_the_interval() -> None:
    started = timezone.now() - timedelta(seconds=2)
    JobRun.objects.create(
        job=Job.HOUSEKEEPING, started_at=started, finished_at=started, outcome="ok"
    )
    summary = next(s for s in jobs_summary() if s.job == Job.HOUSEKEEPING)
    expected = started + timedelta(seconds=3600)
    assert abs((summary.next_run - expected).total_seconds()) < 2


def test_a_job_never_run_is_due_now(login: Login) -> None:
    summary = next(s for s in jobs_summary() if s.job == Job.HOUSEKEEPING)
    assert summary.next_run_due
    html = login(OPERATOR).get(reverse("jobs:manager")).content.decode()
    row = html[html.index('id="job-housekeeping"') :]
    assert "<td>due now</td>" in row[: row.index("</tr>")]


def test_a_disabled_job_has_no_next_run() -> None:
    PeriodicTask.objects.filter(task=Job.MARK_COMPLETED.value).update(enabled=False)
    summary = next(s for s in jobs_summary() if s.job == Job.MARK_COMPLETED)
    assert (summary.enabled, summary.next_run) == (False, None)


def test_the_operator_sees_run_now_but_no_schedule_form(login: Login) -> None:
    html = login(OPERATOR).get(reverse("jobs:manager")).content.decode()
    assert reverse("jobs:run", args=["generate_items"]) in html
    assert reverse("jobs:run", args=["process_outbound"]) not in html  # per batch only
    assert reverse("jobs:schedule", args=["generate_items"]) not in html


def test_the_administrator_sees_the_schedule_form(login: Login) -> None:
    html = login(ADMINISTRATOR).get(reverse("jobs:manager")).content.decode()
    assert reverse("jobs:schedule", args=["generate_items"]) in html
    assert 'name="every"' in html


def test_the_live_part_is_a_fragment(login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:live"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Generate campaign items" in html
    assert "<html" not in html


# --- run now -----------------------------------------------------------------


@pytest.fixture
def job_queue():
    """A queue of this test's own on the real broker, set on the beat
    schedule of generate-items, so what run-now sends lands there."""
    name = f"herald-test-runnow-{os.getpid()}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(name)
    PeriodicTask.objects.filter(pk=periodic(Job.GENERATE_ITEMS).pk).update(queue=name)
    yield broker, name
    broker.delete(name)


def test_run_now_by_an_operator_enqueues_the_task_and_is_audited(
    login: Login, job_queue, django_capture_on_commit_callbacks
) -> None:
    broker, queue = job_queue
    client = login(OPERATOR)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:run", args=["generate_items"]))

    assert response.status_code == 302
    action = JobAction.objects.get()
    assert (action.username, action.action, action.target) == (
        "operator",
        JobAction.Action.RUN_NOW,
        "Generate campaign items",
    )
    messages = [json.loads(m) for m in broker.lrange(queue, 0, -1)]
    assert [m["headers"]["task"] for m in messages] == [Job.GENERATE_ITEMS.value]
    html = client.get(reverse("jobs:manager")).content.decode()
    assert "was sent to the workers" in html
    assert "Run now" in html and "operator" in html


def test_run_now_is_refused_to_a_marketer(login: Login, job_queue) -> None:
    broker, queue = job_queue
    response = login(MARKETER).post(reverse("jobs:run", args=["generate_items"]))
    assert response.status_code == 403
    assert not JobAction.objects.exists()
    assert broker.llen(queue) == 0


def test_run_now_refuses_a_job_that_runs_per_batch(login: Login) -> None:
    response = login(OPERATOR).post(reverse("jobs:run", args=["process_outbound"]))
    assert response.status_code == 400
    assert "cannot be run by hand" in response.content.decode()
    assert not JobAction.objects.exists()


def test_run_now_of_an_unknown_job_is_not_found(login: Login) -> None:
    assert login(OPERATOR).post(reverse("jobs:run", args=["no_such_job"])).status_code == 404


def test_run_now_takes_only_post(login: Login) -> None:
    assert login(OPERATOR).get(reverse("jobs:run", args=["generate_items"])).status_code == 405


# --- schedules ---------------------------------------------------------------


def test_an_administrator_changes_the_interval_and_it_is_audited(login: Login) -> None:
    response = login(ADMINISTRATOR).post(
        reverse("jobs:schedule", args=["generate_items"]), {"every": "17", "enabled": "on"}
    )

    assert response.status_code == 302
    task = periodic(Job.GENERATE_ITEMS)
    assert (task.interval.every, task.interval.period, task.enabled) == (17, "seconds", True)
    assert task.expire_seconds == 34
    action = JobAction.objects.get()
    assert (action.username, action.action) == ("administrator", JobAction.Action.SCHEDULE)
    assert action.detail == "every 5 seconds, enabled -> every 17 seconds, enabled"


def test_an_administrator_disables_a_job(login: Login) -> None:
    login(ADMINISTRATOR).post(reverse("jobs:schedule", args=["mark_completed"]), {"every": "10"})

    assert periodic(Job.MARK_COMPLETED).enabled is False
    assert JobAction.objects.get().detail.endswith("-> every 10 seconds, disabled")


def test_an_unchanged_schedule_records_nothing(login: Login) -> None:
    login(ADMINISTRATOR).post(
        reverse("jobs:schedule", args=["mark_completed"]), {"every": "10", "enabled": "on"}
    )
    assert not JobAction.objects.exists()


def test_an_operator_cannot_change_a_schedule(login: Login) -> None:
    response = login(OPERATOR).post(
        reverse("jobs:schedule", args=["generate_items"]), {"every": "17", "enabled": "on"}
    )
    assert response.status_code == 403
    assert periodic(Job.GENERATE_ITEMS).interval.every == 5
    assert not JobAction.objects.exists()


@pytest.mark.parametrize(
    ("every", "error"),
    [
        ("0", "at least 1 second"),
        ("-5", "at least 1 second"),
        ("abc", "whole number of seconds"),
        ("", "Give the interval in seconds"),
        ("99999999", "at most 604800 seconds"),
    ],
)
def test_a_bad_interval_is_refused_with_a_clear_error(every: str, error: str, login: Login) -> None:
    response = login(ADMINISTRATOR).post(
        reverse("jobs:schedule", args=["generate_items"]), {"every": every, "enabled": "on"}
    )
    assert response.status_code == 400
    assert error in response.content.decode()
    assert periodic(Job.GENERATE_ITEMS).interval.every == 5
    assert not JobAction.objects.exists()


def test_a_per_batch_job_has_no_schedule_to_change(login: Login) -> None:
    response = login(ADMINISTRATOR).post(
        reverse("jobs:schedule", args=["process_outbound"]), {"every": "5", "enabled": "on"}
    )
    assert response.status_code == 400
    assert not PeriodicTask.objects.filter(task=Job.PROCESS_OUTBOUND.value).exists()


def test_a_crontab_schedule_becomes_an_interval(login: Login) -> None:
    from django_celery_beat.models import CrontabSchedule

    task = periodic(Job.HOUSEKEEPING)
    task.interval = None
    task.crontab = CrontabSchedule.objects.create(minute="0", hour="3")
    task.save()

    login(ADMINISTRATOR).post(
        reverse("jobs:schedule", args=["housekeeping"]), {"every": "600", "enabled": "on"}
    )

    task.refresh_from_db()
    assert (task.crontab, task.interval.every) == (None, 600)


# --- failing and slow jobs ---------------------------------------------------


def fail() -> int:
    raise RuntimeError("SMTP relay refused: 554 no thanks")


def test_a_job_failing_in_a_row_shows_its_error_and_raises_a_notification(login: Login) -> None:
    for _ in range(3):
        with pytest.raises(RuntimeError):
            job_run_record(job=Job.MARK_COMPLETED, work=fail)

    notification = Notification.objects.get(key=failing_key(Job.MARK_COMPLETED))
    assert notification.level == "error"
    assert "failed 3 times in a row" in notification.title
    assert "554 no thanks" in notification.message
    html = login(OPERATOR).get(reverse("jobs:manager")).content.decode()
    assert "RuntimeError: SMTP relay refused: 554 no thanks" in html
    assert "failed 3 times in a row" in html
    assert 'class="herald-flagged"' in html


def test_fewer_failures_raise_nothing() -> None:
    for _ in range(2):
        with pytest.raises(RuntimeError):
            job_run_record(job=Job.MARK_COMPLETED, work=fail)
    assert not Notification.objects.exists()


def test_a_success_resolves_the_failing_notification() -> None:
    for _ in range(3):
        with pytest.raises(RuntimeError):
            job_run_record(job=Job.MARK_COMPLETED, work=fail)

    job_run_record(job=Job.MARK_COMPLETED, work=lambda: 4)

    assert not Notification.objects.filter(resolved_at__isnull=True).exists()


def history(job: Job, seconds: list[float]) -> None:
    start = timezone.now() - timedelta(hours=1)
    JobRun.objects.bulk_create(
        JobRun(
            job=job,
            started_at=start + timedelta(minutes=i),
            finished_at=start + timedelta(minutes=i, seconds=s),
            outcome=JobRun.Outcome.OK,
        )
        for i, s in enumerate(seconds)
    )


def test_a_run_far_longer_than_usual_is_flagged_and_notified(login: Login) -> None:
    history(Job.GENERATE_ITEMS, [20, 22, 21, 25, 19])
    JobRun.objects.create(
        job=Job.GENERATE_ITEMS,
        started_at=timezone.now() - timedelta(minutes=3),
        worker="mailer1:4242",
    )

    assert jobs_check() == 1

    notification = Notification.objects.get(key=slow_key(Job.GENERATE_ITEMS))
    assert "has been running for 18" in notification.title
    assert "Usually 21.0 s" in notification.message and "mailer1:4242" in notification.message
    html = login(OPERATOR).get(reverse("jobs:manager")).content.decode()
    assert "(usually 21.0 s)" in html


def test_a_long_run_within_five_medians_is_not_flagged() -> None:
    history(Job.GENERATE_ITEMS, [40, 50, 45])
    JobRun.objects.create(job=Job.GENERATE_ITEMS, started_at=timezone.now() - timedelta(minutes=3))
    assert jobs_check() == 0
    assert not Notification.objects.exists()


def test_a_quick_job_is_not_flagged_under_a_minute() -> None:
    history(Job.GENERATE_ITEMS, [0.1, 0.2, 0.1])
    JobRun.objects.create(job=Job.GENERATE_ITEMS, started_at=timezone.now() - timedelta(seconds=50))
    assert jobs_check() == 0


def test_the_slow_notification_resolves_when_the_run_ends() -> None:
    history(Job.GENERATE_ITEMS, [1, 1, 1])
    run = JobRun.objects.create(
        job=Job.GENERATE_ITEMS, started_at=timezone.now() - timedelta(minutes=3)
    )
    jobs_check()
    JobRun.objects.filter(pk=run.pk).update(outcome="ok", finished_at=timezone.now())

    jobs_check()

    assert not Notification.objects.filter(resolved_at__isnull=True).exists()


def test_the_check_runs_as_a_beat_job() -> None:
    task = PeriodicTask.objects.get(task=Job.CHECK_JOBS.value)
    assert task.enabled and task.interval.every == 30
    assert IntervalSchedule.objects.filter(pk=task.interval_id).exists()


# Outside a test transaction, as in production: the task is sent when the
# request's writes commit, inside the view.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_run_now_with_the_broker_down_says_so_and_the_audit_keeps_it(
    login: Login, settings
) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = login(OPERATOR).post(reverse("jobs:run", args=["generate_items"]))

    assert response.status_code == 503
    assert "was not sent: the broker is unreachable" in response.content.decode()
    assert JobAction.objects.get().detail.startswith("not sent: ")
