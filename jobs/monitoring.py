"""Health, readiness and Prometheus metrics: for load balancers, compose
health checks and scrapers, so no login. They show no personal data."""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .models import Job
from .selectors import dispatchers_panel, jobs_summary, messages_totals
from .services import support_token_authenticate
from .support import support_indicators

BROKER_TIMEOUT = 1.0


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive and serves requests; nothing else is asked."""
    return HttpResponse("ok", content_type="text/plain")


def database_error() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {exc}".strip()
    return ""


def broker_error() -> str:
    options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "socket_connect_timeout": BROKER_TIMEOUT,
        "socket_timeout": BROKER_TIMEOUT,
        "max_retries": 1,
    }
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT, transport_options=options
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {exc}".strip()
    return ""


@require_GET
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready when the database and the broker both answer; 503 says which
    did not (the error class and text, never a secret of the URL)."""
    failed = {
        name: check() for name, check in (("database", database_error), ("broker", broker_error))
    }
    failed = {name: error for name, error in failed.items() if error}
    if not failed:
        return HttpResponse("ok: database, broker", content_type="text/plain")
    body = "\n".join(f"{name}: unreachable ({error[:200]})" for name, error in failed.items())
    return HttpResponse(body, status=503, content_type="text/plain")


# --- metrics -----------------------------------------------------------------


class HeraldCollector(Collector):
    """Read at scrape time from the database, so every web process gives the
    same numbers whichever worker did the work."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._messages()
        yield from self._dispatchers()
        yield from self._jobs()

    def _messages(self) -> Iterator[CounterMetricFamily]:
        messages = CounterMetricFamily(
            "herald_messages",
            "Messages by dispatcher and final outcome (sent, failed, skipped, bounced).",
            labels=["dispatcher", "outcome"],
        )
        for (dispatcher, outcome), n in sorted(messages_totals().items()):
            messages.add_metric([dispatcher, outcome], n)
        yield messages

    def _dispatchers(self) -> Iterator[GaugeMetricFamily]:
        figures = {
            "backlog": "Items due now (pending, and deferred whose retry time came).",
            "deferred": "Items waiting to be retried.",
            "batches_in_flight": "Batches claimed and not yet finished.",
            "used_last_hour": "Messages reserved in the last 60 minutes.",
            "limit": "Hourly limit.",
        }
        families = {
            name: GaugeMetricFamily(f"herald_dispatcher_{name}", help, labels=["dispatcher"])
            for name, help in figures.items()
        }
        enabled = GaugeMetricFamily(
            "herald_dispatcher_enabled", "1 when enabled, 0 when paused.", labels=["dispatcher"]
        )
        for panel in dispatchers_panel():
            name = panel.dispatcher.name
            for figure, family in families.items():
                family.add_metric([name], getattr(panel, figure))
            enabled.add_metric([name], 1 if panel.dispatcher.is_enabled else 0)
        yield from families.values()
        yield enabled

    def _jobs(self) -> Iterator[GaugeMetricFamily]:
        duration = GaugeMetricFamily(
            "herald_job_last_duration_seconds", "Duration of the last finished run.", labels=["job"]
        )
        median = GaugeMetricFamily(
            "herald_job_median_duration_seconds",
            "Median duration of recent successful runs.",
            labels=["job"],
        )
        failures = GaugeMetricFamily(
            "herald_job_failures_24h", "Failed runs in the last 24 hours.", labels=["job"]
        )
        in_a_row = GaugeMetricFamily(
            "herald_job_consecutive_failures", "Failed runs in a row, newest first.", labels=["job"]
        )
        last_run = GaugeMetricFamily(
            "herald_job_last_run_timestamp_seconds", "Start of the last run.", labels=["job"]
        )
        for summary in jobs_summary():
            name = Job(summary.job).name.lower()
            finished = summary.recent_durations
            if finished:
                duration.add_metric([name], finished[-1])
            if summary.health and summary.health.median is not None:
                median.add_metric([name], summary.health.median)
            failures.add_metric([name], summary.failures_24h)
            in_a_row.add_metric([name], summary.health.failures if summary.health else 0)
            if summary.last:
                last_run.add_metric([name], summary.last.started_at.timestamp())
        yield from (duration, median, failures, in_a_row, last_run)


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeraldCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


# --- troubleshooting -----------------------------------------------------------


@require_GET
@never_cache
def troubleshooting(request: HttpRequest) -> HttpResponse:
    """Aggregated sending indicators for support staff, behind a token an
    administrator makes and revokes (Troubleshooting tokens in the admin).
    No login: support staff have no account; no personal data either."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        response = JsonResponse(
            {"error": "Send a troubleshooting token: Authorization: Bearer <token>."}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="herald-troubleshooting"'
        return response
    if support_token_authenticate(raw=raw.strip()) is None:
        return JsonResponse({"error": "This token is unknown or was revoked."}, status=403)
    return JsonResponse(support_indicators(), json_dumps_params={"indent": 2})
