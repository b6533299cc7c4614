"""Thin Celery tasks: each runs one service and records the run."""

from celery import shared_task

from jobs.models import Job
from jobs.services import job_run_record

from . import services
from .import_tasks import import_run  # noqa: F401 - Celery discovers tasks.py only


@shared_task(name=Job.GENERATE_ITEMS.value)
def generate_items() -> int:
    return job_run_record(job=Job.GENERATE_ITEMS, work=services.items_generate)


@shared_task(name=Job.PROCESS_MESSAGES.value)
def process_messages() -> int:
    return job_run_record(job=Job.PROCESS_MESSAGES, work=services.messages_process)


@shared_task(name=Job.PROCESS_OUTBOUND.value)
def send_batch(batch_id: int) -> int:
    settled = job_run_record(
        job=Job.PROCESS_OUTBOUND, work=lambda: services.batch_send(batch_id=batch_id)
    )
    # Keep the dispatcher's queue full between process-messages runs.
    services.batch_successor_claim(batch_id=batch_id)
    return settled


@shared_task(name=Job.MARK_COMPLETED.value)
def mark_completed() -> int:
    return job_run_record(job=Job.MARK_COMPLETED, work=services.campaigns_complete)


@shared_task(name=Job.PROCESS_AUTORESPONDERS.value)
def process_autoresponders() -> int:
    return job_run_record(job=Job.PROCESS_AUTORESPONDERS, work=services.autoresponders_process)


@shared_task(name=Job.HOUSEKEEPING.value)
def housekeeping() -> int:
    return job_run_record(job=Job.HOUSEKEEPING, work=services.history_prune)
