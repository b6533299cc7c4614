"""/healthz, /readyz, /metrics, and the notifications count in the header."""

from __future__ import annotations

import pytest
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from accounts.roles import MARKETER, OPERATOR
from campaigns.models import Campaign, CampaignItem, Contact
from jobs.models import Job, Notification
from jobs.services import job_run_record
from tests.helpers import make_campaign, make_dispatcher

from .conftest import Login

pytestmark = pytest.mark.django_db


def test_healthz_answers_ok(client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.content) == (200, b"ok")


def test_readyz_answers_ok_when_database_and_broker_answer(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.content.decode() == "ok: database, broker"


def test_readyz_says_the_broker_is_down(client, settings) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.content.decode()
    assert body.startswith("broker: unreachable (")
    assert "database" not in body


def metrics(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def sent(dispatcher: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("herald_messages_total", (("dispatcher", dispatcher), ("outcome", "sent")))


def test_metrics_count_messages_and_move_when_mail_is_sent(client) -> None:
    dispatcher = make_dispatcher(name="Relay")
    campaign = make_campaign(dispatcher=dispatcher, lists=[], status=Campaign.Status.SENDING)
    contacts = Contact.objects.bulk_create(Contact(email=f"m{i}@example.org") for i in range(4))
    CampaignItem.objects.bulk_create(
        CampaignItem(campaign=campaign, contact=c, status=s)
        for c, s in zip(contacts, ["sent", "failed", "pending", "pending"], strict=True)
    )
    done = make_campaign(dispatcher=dispatcher, lists=[], status=Campaign.Status.COMPLETED)
    Campaign.objects.filter(pk=done.pk).update(sent_count=10, failed_count=2, skipped_count=1)

    before = metrics(client)
    assert before[sent("Relay")] == 11
    assert before[("herald_messages_total", (("dispatcher", "Relay"), ("outcome", "failed")))] == 3
    assert before[("herald_dispatcher_backlog", (("dispatcher", "Relay"),))] == 2
    assert before[("herald_dispatcher_enabled", (("dispatcher", "Relay"),))] == 1

    CampaignItem.objects.filter(campaign=campaign, status="pending").update(status="sent")

    after = metrics(client)
    assert after[sent("Relay")] == 13
    assert after[("herald_dispatcher_backlog", (("dispatcher", "Relay"),))] == 0


def test_metrics_report_job_durations_and_failures(client) -> None:
    job_run_record(job=Job.MARK_COMPLETED, work=lambda: 1)

    def fail() -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        job_run_record(job=Job.MARK_COMPLETED, work=fail)

    values = metrics(client)
    job = (("job", "mark_completed"),)
    assert values[("herald_job_failures_24h", job)] == 1
    assert values[("herald_job_consecutive_failures", job)] == 1
    assert values[("herald_job_last_duration_seconds", job)] >= 0
    assert ("herald_job_last_run_timestamp_seconds", job) in values


def test_the_header_counts_open_notifications_for_those_who_may_see_them(login: Login) -> None:
    Notification.objects.create(key="a", title="A")
    Notification.objects.create(key="b", title="B")
    Notification.objects.create(key="c", title="C", resolved_at="2026-01-01T00:00Z")

    html = login(OPERATOR).get(reverse("admin:index")).content.decode()
    link = reverse("admin:jobs_notification_changelist") + "?resolved_at__isempty=1"
    assert f'href="{link}"' in html
    assert '<span class="herald-header-count">2</span>' in html


def test_the_header_has_no_count_for_a_marketer(login: Login) -> None:
    Notification.objects.create(key="a", title="A")
    html = login(MARKETER).get(reverse("admin:index")).content.decode()
    assert "herald-header-count" not in html


def test_the_notifications_link_opens_the_open_ones(login: Login) -> None:
    Notification.objects.create(key="a", title="Still open")
    Notification.objects.create(key="b", title="Long gone", resolved_at="2026-01-01T00:00Z")
    response = login(OPERATOR).get(
        reverse("admin:jobs_notification_changelist") + "?resolved_at__isempty=1"
    )
    html = response.content.decode()
    assert "Still open" in html and "Long gone" not in html
