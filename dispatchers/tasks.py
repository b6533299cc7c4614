"""Thin Celery tasks: each runs one service and records the run."""

from celery import shared_task

from jobs.models import Job
from jobs.services import job_run_record

from . import domains


@shared_task(name=Job.VERIFY_SENDER_DOMAINS.value)
def verify_sender_domains() -> int:
    return job_run_record(job=Job.VERIFY_SENDER_DOMAINS, work=domains.sender_domains_verify)
