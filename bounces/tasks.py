"""Thin Celery tasks: each runs one service and records the run."""

from celery import shared_task

from jobs.models import Job
from jobs.services import job_run_record

from . import services


@shared_task(name=Job.PROCESS_BOUNCES.value)
def process_bounces() -> int:
    return job_run_record(job=Job.PROCESS_BOUNCES, work=services.bounces_process)
