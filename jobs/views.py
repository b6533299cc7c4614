from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from kombu.exceptions import OperationalError

from dispatchers.models import Dispatcher

from . import selectors, services
from .forms import DispatcherPauseForm, HistoryFilterForm, JobScheduleForm
from .models import Job

HISTORY_PAGE = 50


def _job(key: str) -> Job:
    try:
        return Job[key.upper()]
    except KeyError:
        raise Http404(f"No job {key!r}.") from None


def _live_context() -> dict[str, Any]:
    workers = selectors.workers_alive(
        timeout=settings.HERALD_WORKERS_TIMEOUT, max_age=settings.HERALD_WORKERS_MAX_AGE
    )
    panels = selectors.dispatchers_panel()
    for panel in panels:
        queue = panel.dispatcher.queue
        panel.consumed_by = [w.name for w in workers.workers if queue in w.queues]
    job_queue = current_app.conf.task_default_queue
    return {
        "jobs": selectors.jobs_summary(),
        "notifications": selectors.notifications_open(),
        "dispatchers": panels,
        "workers": workers,
        "job_queue": job_queue,
        "job_queue_consumed": job_queue in workers.queues,
        "actions": selectors.job_actions_recent(),
        "recent": selectors.job_runs_history()[:20],
    }


def _page(request: HttpRequest, status: int = 200) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Job manager",
        **_live_context(),
    }
    return render(request, "jobs/manager.html", context, status=status)


@login_required
@permission_required("jobs.view_jobrun", raise_exception=True)
def job_manager(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@permission_required("jobs.view_jobrun", raise_exception=True)
def job_manager_live(request: HttpRequest) -> HttpResponse:
    """The part of the page that refreshes itself."""
    return render(request, "jobs/_live.html", _live_context())


@login_required
@permission_required("jobs.view_jobrun", raise_exception=True)
def job_history(request: HttpRequest) -> HttpResponse:
    form = HistoryFilterForm(request.GET)
    status = 200
    if form.is_valid():
        page = selectors.job_runs_page(**form.cleaned_data, size=HISTORY_PAGE)
    else:
        status = 400
        page = selectors.RunsPage(runs=[], has_older=False, has_newer=False, count=0)
    query = request.GET.copy()
    for cursor in ("before", "after", "page"):
        query.pop(cursor, None)
    context = {
        **admin.site.each_context(request),
        "title": "Job history",
        "form": form,
        "page": page,
        "query": query.urlencode(),
    }
    return render(request, "jobs/history.html", context, status=status)


@require_POST
@login_required
@permission_required("jobs.run_job", raise_exception=True)
def job_run_now(request: HttpRequest, job: str) -> HttpResponse:
    chosen = _job(job)
    try:
        services.job_run_now(job=chosen, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return _page(request, status=400)
    except OperationalError as exc:
        messages.error(request, f"{chosen.label} was not sent: the broker is unreachable ({exc}).")
        return _page(request, status=503)
    messages.success(request, f"{chosen.label} was sent to the workers; its run appears below.")
    return redirect("jobs:manager")


@require_POST
@login_required
@permission_required("django_celery_beat.change_periodictask", raise_exception=True)
def job_schedule(request: HttpRequest, job: str) -> HttpResponse:
    chosen = _job(job)
    form = JobScheduleForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(e for field in form.errors.values() for e in field)
        messages.error(request, f"{chosen.label}: schedule not changed. {errors}")
        return _page(request, status=400)
    try:
        changed = services.job_schedule_change(
            job=chosen,
            every_seconds=form.cleaned_data["every"],
            enabled=form.cleaned_data["enabled"],
            user=request.user,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return _page(request, status=400)
    if changed is None:
        messages.info(request, f"{chosen.label}: the schedule was already so.")
    else:
        messages.success(request, f"{chosen.label}: {changed.detail}.")
    return redirect("jobs:manager")


@require_POST
@login_required
@permission_required("dispatchers.pause_dispatcher", raise_exception=True)
def dispatcher_pause(request: HttpRequest, pk: int) -> HttpResponse:
    dispatcher = get_object_or_404(Dispatcher, pk=pk)
    form = DispatcherPauseForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{dispatcher.name} not paused: the reason is too long.")
        return _page(request, status=400)
    reason = form.cleaned_data["reason"]
    if services.dispatcher_pause_by_hand(dispatcher_id=pk, user=request.user, reason=reason):
        messages.success(request, f"Paused {dispatcher.name}: it claims nothing until resumed.")
    else:
        messages.info(request, f"{dispatcher.name} was already paused.")
    return redirect("jobs:manager")


@require_POST
@login_required
@permission_required("dispatchers.pause_dispatcher", raise_exception=True)
def dispatcher_resume(request: HttpRequest, pk: int) -> HttpResponse:
    dispatcher = get_object_or_404(Dispatcher, pk=pk)
    if services.dispatcher_resume_by_hand(dispatcher_id=pk, user=request.user):
        messages.success(request, f"Resumed {dispatcher.name}.")
    else:
        messages.info(request, f"{dispatcher.name} was not paused.")
    return redirect("jobs:manager")
