"""The Celery task that runs a CSV import (thin: it calls one service).

Celery's autodiscovery imports only each app's tasks.py; campaigns/tasks.py
imports this module, so workers know the task by name."""

from celery import shared_task

from . import imports

# A million rows take minutes, not the hour-long default of other tasks.
IMPORT_SOFT_TIME_LIMIT = 6 * 3600


@shared_task(
    name="campaigns.import_run",
    acks_late=True,
    soft_time_limit=IMPORT_SOFT_TIME_LIMIT,
    time_limit=IMPORT_SOFT_TIME_LIMIT + 300,
)
def import_run(import_id: int) -> int:
    job = imports.import_run(job_id=import_id)
    return job.rows_read if job else 0
