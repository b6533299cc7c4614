"""Real Celery processes for tests: a worker and beat against the test
database, started and stopped by the test itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The DATABASE_URL of the database this test process is using."""
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s["HOST"] or ""
    if host.startswith("/"):
        # A unix socket folder: django-environ reads it from the path form
        # postgres://user@//socket/dir/name (it does not decode %2F hosts).
        return f"postgres://{auth}@/{host}/{s['NAME']}"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


# Each test run has its own job queue, so two runs sharing one Redis (a
# developer's and CI's) never take each other's tasks.
JOB_QUEUE = f"herald-test-{os.getpid()}"


def celery_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        HERALD_DEFAULT_QUEUE=JOB_QUEUE,
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_worker(
    queues: list[str], log: Path, env: dict[str, str], concurrency: int = 2
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"test{log.stem}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_beat(log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "-S",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "--pidfile=",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    """Stop a process (warm shutdown first), then anything it left behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its pool children, if any remain
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@contextmanager
def running(*processes: subprocess.Popen) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            stop(process)


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, logs: list[Path] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tail = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def run_until(
    condition: Callable[[], bool],
    *,
    queues: list[str],
    env: dict[str, str],
    logs: Path,
    timeout: float,
    what: str,
    beats: int = 1,
) -> None:
    """Run a worker (on the job queue and ``queues``) and beat until
    ``condition`` holds; stop them whatever happens. The worker must still
    be alive at the end: a crashed worker is a failure, not a slow run."""
    worker = start_worker([JOB_QUEUE, *queues], logs / "worker.log", env)
    beat_processes = [start_beat(logs / f"beat{i}.log", env) for i in range(beats)]
    with running(*beat_processes, worker):
        wait_for(condition, timeout=timeout, what=what, logs=sorted(logs.glob("*.log")))
        assert worker.poll() is None, "the worker died"
