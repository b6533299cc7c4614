from django.contrib import admin
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import JobRun
from .selectors import jobs_summary, notifications_open


@login_required
@permission_required("jobs.view_jobrun", raise_exception=True)
def job_manager(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Job manager",
        "jobs": jobs_summary(),
        "notifications": notifications_open(),
        "recent": JobRun.objects.order_by("-started_at")[:50],
    }
    return render(request, "jobs/manager.html", context)
