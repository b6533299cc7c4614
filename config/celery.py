import gc
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("herald")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _connections_age(sender: Any = None, **_: Any) -> None:
    """A task's database connections follow the rules of a web request's:
    kept up to CONN_MAX_AGE, checked before reuse (CONN_HEALTH_CHECKS), and
    dropped after an error that broke them (CELERY_DB_REUSE_MAX in
    settings keeps Celery from closing them all after every task). An
    eager task runs inside its caller's request or transaction: left be."""
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections  # after Django is set up

    close_old_connections()


@signals.worker_process_init.connect
def _collector_tune(**_: Any) -> None:
    """A worker process starts with Django and every app imported: over a
    hundred thousand objects that live as long as it does, which each
    full collection of the cyclic garbage collector walked again (about 5%
    of a sending worker's CPU, measured with perf). Frozen, they are left
    out of every collection; and the youngest generation is collected
    after 10,000 allocations instead of 700, as rendering a batch allocates
    and frees far more than that without making cycles."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
