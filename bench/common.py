"""What the benchmarks share: sizes, the results file, data made with
set-based SQL, the realistic message, an SMTP sink, real worker processes.

A benchmark module runs as ``python -m bench.<name>`` in its own process,
against the fresh database bench/run.py made for it (DATABASE_URL), and
writes its figures to the JSON file named by BENCH_RESULT. Nothing here
imports Django at module level: run.py reads the modules' ROWS without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


# --- sizes ---------------------------------------------------------------------


def scale() -> float:
    return float(os.environ.get("BENCH_SCALE") or 1)


def scaled(full: int, minimum: int = 1000) -> int:
    """A size of the issue (``full``) times BENCH_SCALE, never below ``minimum``."""
    return max(int(full * scale()), minimum)


# --- the table's rows ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table. ``herald`` and ``reference`` name figures the
    module reports; ``met`` judges the medians (None: nothing to judge)."""

    figure: str
    unit: str
    herald: str
    target: str
    reference: str | None = None
    reference_label: str = ""
    met: Callable[[float, float | None], bool] | None = None
    digits: int = 0


# --- results -----------------------------------------------------------------------


class Results:
    """Figures (numbers, or None for "n/a") and notes of one run."""

    def __init__(self) -> None:
        self.figures: dict[str, float | None] = {}
        self.notes: list[str] = []

    def put(self, name: str, value: float | None) -> None:
        self.figures[name] = value

    def note(self, text: str) -> None:
        say(text)
        self.notes.append(text)

    def save(self) -> None:
        path = os.environ.get("BENCH_RESULT")
        payload = json.dumps({"figures": self.figures, "notes": self.notes}, indent=1)
        if path:
            Path(path).write_text(payload)
        else:
            print(payload)


def say(text: str) -> None:
    print(f"  {text}", flush=True)


# --- Django ----------------------------------------------------------------------


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def sql(statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement; a literal % is written %% (params or not)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(statement, params or {})
        return cur.fetchall() if cur.description else []


def vacuum(*tables: str) -> None:
    """VACUUM ANALYZE and a checkpoint, so a timed step starts from the same
    state whatever ran before it (VACUUM cannot run in a transaction)."""
    for table in tables:
        sql(f"VACUUM ANALYZE {table}")
    sql("CHECKPOINT")


# --- data --------------------------------------------------------------------------

# One INSERT ... SELECT over generate_series: a million contacts take a few
# seconds, where the ORM's bulk_create takes minutes.
_CONTACTS = """
INSERT INTO campaigns_contact (email, phone, first_name, last_name, language, time_zone,
                               attributes, status, source, created_at, updated_at)
SELECT 'user' || i || '@example' || (i %% 50) || '.org',
       '+4420794' || lpad((i %% 100000)::text, 5, '0'),
       'First' || i, 'Last' || i, 'en', 'Europe/London',
       jsonb_build_object('plan', (ARRAY['free', 'pro', 'team'])[1 + i %% 3],
                          'city', (ARRAY['Leeds', 'Lyon', 'Porto', 'Graz'])[1 + i %% 4],
                          'orders', i %% 17),
       'active', 'bench', now(), now()
FROM generate_series(%(first)s, %(last)s) AS i
"""

_SUBSCRIBE = """
INSERT INTO campaigns_subscription (created_at, source, contact_id, contact_list_id)
SELECT now(), 'bench', c.id, %(list)s FROM campaigns_contact c
WHERE c.id > %(after)s
"""

# Every 100th contact is on the suppression list (1%).
_SUPPRESS = """
INSERT INTO campaigns_suppression (pattern, reason, source, created_at)
SELECT lower(c.email), 'bench', 'manual', now() FROM campaigns_contact c
WHERE c.id > %(after)s AND c.id %% 100 = 0
"""


def audience_create(count: int, *, name: str = "Bench list", suppressed: bool = False) -> Any:
    """A list of ``count`` new subscribed contacts (1% of them suppressed
    when asked), made with set-based SQL."""
    from campaigns.models import ContactList

    contact_list = ContactList.objects.create(name=name)
    after = sql("SELECT coalesce(max(id), 0) FROM campaigns_contact")[0][0]
    sql(_CONTACTS, {"first": after + 1, "last": after + count})
    sql(_SUBSCRIBE, {"list": contact_list.pk, "after": after})
    if suppressed:
        sql(_SUPPRESS, {"after": after})
    vacuum("campaigns_contact", "campaigns_subscription", "campaigns_suppression")
    return contact_list


# --- the message ---------------------------------------------------------------------

# A newsletter of the usual shape: personalised greeting, a few articles, a
# call to action, a footer with the unsubscribe link. About 5 KB on the wire
# with its headers and both parts.
SUBJECT = "{{ contact.first_name }}, your {{ contact.attributes.plan }} plan news for May"

_ARTICLE_HTML = """
<tr><td style="padding:16px 24px;font-family:Arial,sans-serif;font-size:15px;color:#333">
<h2 style="margin:0 0 8px;font-size:18px;color:#1a1a1a">{title}</h2>
<p style="margin:0 0 12px;line-height:1.5">{body}</p>
<a href="https://news.example.com/{slug}?c={{{{ contact.attributes.city|urlencode }}}}"
   style="color:#0b57d0">Read more</a>
</td></tr>"""

_ARTICLES = [
    (
        "Spring release: faster reports",
        "Reports now open in a blink, even for lists of a million people. Filters remember "
        "what you chose last time, and exports include every custom field you track.",
        "spring-release",
    ),
    (
        "Meet us in {{ contact.attributes.city }}",
        "Our team is on tour this month. Come for a coffee, bring your questions, and leave "
        "with a plan for your next campaign. Seats are limited, so book early.",
        "tour",
    ),
    (
        "Tips: write subjects people open",
        "Short, concrete, and about the reader: the subjects that work best say what is "
        "inside. We looked at ten thousand campaigns; here is what we learned.",
        "subject-tips",
    ),
]

HTML = (
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>News</title>
<style>.footer a { color: #777777; } .cta { background: #0b57d0; color: #ffffff; }</style>
</head><body style="margin:0;background:#f4f4f4">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"
       style="max-width:640px;margin:0 auto;background:#ffffff">
<tr><td style="padding:24px;font-family:Arial,sans-serif;font-size:16px;color:#333">
<p>Hello {{ contact.first_name }} {{ contact.last_name }},</p>
<p>thank you for being with us on the <strong>{{ contact.attributes.plan }}</strong> plan.
You placed {{ contact.attributes.orders }} orders this year.</p>
</td></tr>"""
    + "".join(_ARTICLE_HTML.format(title=t, body=b, slug=s) for t, b, s in _ARTICLES)
    + """
<tr><td style="padding:24px;text-align:center">
<a class="cta" href="https://app.example.com/upgrade?email={{ contact.email|urlencode }}"
   style="display:inline-block;padding:12px 24px;border-radius:4px;text-decoration:none">
Upgrade your plan</a></td></tr>
<tr><td class="footer" style="padding:16px 24px;font-family:Arial,sans-serif;font-size:12px;
    color:#777777;border-top:1px solid #eeeeee">
You receive this because {{ contact.email }} subscribed to our news.
<a href="{{ unsubscribe_url }}">Unsubscribe</a> at any time.
Example Ltd, 1 High Street, Leeds LS1 1AA, United Kingdom.
</td></tr></table></body></html>"""
)

TEXT = (
    """Hello {{ contact.first_name }} {{ contact.last_name }},

thank you for being with us on the {{ contact.attributes.plan }} plan.
You placed {{ contact.attributes.orders }} orders this year.

"""
    + "\n\n".join(f"{t}\n{b}\nRead more: https://news.example.com/{s}" for t, b, s in _ARTICLES)
    + """

Upgrade your plan: https://app.example.com/upgrade?email={{ contact.email|urlencode }}

You receive this because {{ contact.email }} subscribed to our news.
Unsubscribe: {{ unsubscribe_url }}
Example Ltd, 1 High Street, Leeds LS1 1AA, United Kingdom.
"""
)


def template_create() -> Any:
    from campaigns.models import Template

    return Template.objects.create(
        name=f"Bench newsletter {time.time_ns()}", subject=SUBJECT, html_body=HTML, text_body=TEXT
    )


def contact_sample(i: int) -> Any:
    """An unsaved contact like those audience_create makes."""
    from campaigns.models import Contact

    return Contact(
        email=f"user{i}@example{i % 50}.org",
        first_name=f"First{i}",
        last_name=f"Last{i}",
        language="en",
        attributes={"plan": ("free", "pro", "team")[i % 3], "city": "Leeds", "orders": i % 17},
    )


# --- SMTP sink -----------------------------------------------------------------------


def postfix_tool(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


class Sink:
    """Postfix's smtp-sink on a free loopback port: accepts and discards
    everything, in C, so it never is the bottleneck (PIPELINING offered)."""

    def __init__(self) -> None:
        from config.embedded import free_port

        binary = postfix_tool("smtp-sink")
        if binary is None:
            raise RuntimeError("smtp-sink is missing: `make bench` installs Debian's postfix")
        self.port = free_port()
        argv = [binary]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
        argv += [f"127.0.0.1:{self.port}", "1024"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def smtp_source_rate(*, port: int, messages: int, size: int, sessions: int = 20) -> float | None:
    """Postfix's smtp-source into the sink: messages/s over ``sessions``
    parallel sessions, each reused for many messages (-d)."""
    binary = postfix_tool("smtp-source")
    if binary is None:
        return None
    argv = [binary, "-s", str(sessions), "-d", "-m", str(messages), "-l", str(size)]
    argv += ["-f", "news@herald.test", "-t", "user@example.org", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


# --- worker processes ------------------------------------------------------------------


class Celery:
    """Herald's Celery worker and beat as `make run` and docker compose start
    them, against this benchmark's database, on a job queue of their own."""

    def __init__(self, *, queues: list[str], concurrency: int, beat: bool = True) -> None:
        from django.db import connection

        self.logs = Path(tempfile.mkdtemp(prefix="herald-bench-celery-"))
        self.job_queue = f"herald-bench-{os.getpid()}"
        s = connection.settings_dict
        env = dict(os.environ, HERALD_DEFAULT_QUEUE=self.job_queue, PYTHONUNBUFFERED="1")
        env["DATABASE_URL"] = database_url_of(s)
        self.env = env
        self.worker = self._spawn(
            ["worker", "-Q", ",".join([self.job_queue, *queues])]
            + ["--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "INFO"]
            + ["--without-gossip", "--without-mingle", "--hostname", f"bench{os.getpid()}@%h"],
            "worker.log",
        )
        self.beat = None
        if beat:
            self.beat = self._spawn(
                ["beat", "--loglevel", "INFO", "--pidfile="]
                + ["-S", "django_celery_beat.schedulers:DatabaseScheduler"],
                "beat.log",
            )

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", *args],
            cwd=ROOT,
            env=self.env,
            stdout=(self.logs / log).open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        log = self.logs / "worker.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in log.read_text(errors="replace"):
                return
            if self.worker.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the worker did not start:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def alive(self) -> bool:
        return self.worker.poll() is None

    def stop(self) -> None:
        for process in (self.beat, self.worker):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # pool children left behind
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
        shutil.rmtree(self.logs, ignore_errors=True)


def database_url_of(s: dict[str, Any]) -> str:
    from urllib.parse import quote

    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s["HOST"] or ""
    if host.startswith("/"):
        return f"postgres://{auth}@/{host}/{s['NAME']}"  # a socket folder (see config.embedded)
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


def rss_mb(pid: int) -> tuple[float, float]:
    """(largest single process, whole tree) resident memory in MB of a
    process and its children; zeros once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
        sizes = []
        for p in family:
            try:
                sizes.append(p.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    return (max(sizes, default=0.0), sum(sizes))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its living children (a
    prefork worker's pool processes live as long as it does)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in family:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def queue_purge(name: str) -> None:
    """Drop the tasks a benchmark enqueued but never ran (claims without a
    worker), so the next run's worker does not find them."""
    from celery import current_app

    with current_app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(name)
        except Exception:  # noqa: BLE001 - a queue never declared has nothing to purge
            pass
