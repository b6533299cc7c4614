"""The job manager's own beat job."""

from celery import shared_task

from .models import Job
from .services import job_run_record, jobs_check


@shared_task(name=Job.CHECK_JOBS.value)
def check_jobs() -> int:
    return job_run_record(job=Job.CHECK_JOBS, work=jobs_check)
