"""Thin Celery tasks: each runs one service and records the run."""

from celery import shared_task

from jobs.models import Job
from jobs.services import job_run_record

from . import oauth


@shared_task(name=Job.REFRESH_OAUTH_TOKENS.value)
def refresh_oauth_tokens() -> int:
    return job_run_record(job=Job.REFRESH_OAUTH_TOKENS, work=oauth.oauth_tokens_refresh)
