"""Job history: paginated, filterable by job and outcome."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.roles import MARKETER, OPERATOR
from jobs.models import Job, JobRun

from .conftest import Login

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs() -> None:
    start = timezone.now() - timedelta(days=1)
    JobRun.objects.bulk_create(
        JobRun(
            job=Job.GENERATE_ITEMS if i % 2 else Job.MARK_COMPLETED,
            started_at=start + timedelta(minutes=i),
            finished_at=start + timedelta(minutes=i, seconds=1),
            outcome=JobRun.Outcome.FAILED if i % 10 == 0 else JobRun.Outcome.OK,
            error="Timeout: relay" if i % 10 == 0 else "",
            items_processed=i,
        )
        for i in range(120)
    )


def test_history_pages_newest_first(runs: None, login: Login) -> None:
    client = login(OPERATOR)
    first = client.get(reverse("jobs:history"))
    assert first.status_code == 200
    page = first.context["page"]
    assert (page.paginator.count, page.paginator.num_pages, len(page.object_list)) == (120, 3, 50)
    assert page.object_list[0].items_processed == 119
    last = client.get(reverse("jobs:history"), {"page": 3}).context["page"]
    assert [r.items_processed for r in last.object_list] == list(range(19, -1, -1))


def test_history_filters_by_job_and_outcome(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(
        reverse("jobs:history"), {"job": Job.MARK_COMPLETED.value, "outcome": "failed"}
    )
    page = response.context["page"]
    assert {(r.job, r.outcome) for r in page.object_list} == {(Job.MARK_COMPLETED, "failed")}
    assert page.paginator.count == 12
    html = response.content.decode()
    assert "Timeout: relay" in html
    assert "Page 1 of 1 (12 runs)" in html


def test_the_filter_is_kept_across_pages(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:history"), {"job": Job.GENERATE_ITEMS.value})
    html = response.content.decode()
    assert "job=campaigns.tasks.generate_items&amp;page=2" in html


def test_a_bad_filter_is_refused(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:history"), {"outcome": "exploded"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert response.context["page"].paginator.count == 0


def test_history_is_refused_to_a_marketer(login: Login) -> None:
    assert login(MARKETER).get(reverse("jobs:history")).status_code == 403
