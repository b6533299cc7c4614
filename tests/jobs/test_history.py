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
    assert (page.count_label, len(page.runs), page.has_older, page.has_newer) == (
        "120 runs",
        50,
        True,
        False,
    )
    assert page.runs[0].items_processed == 119
    assert f"before={page.older_cursor}" in first.content.decode()

    seen = [r.items_processed for r in page.runs]
    while page.has_older:
        page = client.get(reverse("jobs:history"), {"before": page.older_cursor}).context["page"]
        seen += [r.items_processed for r in page.runs]
    assert seen == list(range(119, -1, -1))  # every run once, newest first
    assert page.has_newer

    back = client.get(reverse("jobs:history"), {"after": page.newer_cursor}).context["page"]
    assert [r.items_processed for r in back.runs] == list(range(69, 19, -1))
    assert back.has_newer and back.has_older


def test_a_deep_page_reads_from_its_cursor(runs: None, login: Login) -> None:
    oldest_kept = JobRun.objects.order_by("started_at")[5]
    page = login(OPERATOR).get(reverse("jobs:history"), {"before": oldest_kept.pk}).context["page"]
    assert [r.items_processed for r in page.runs] == [4, 3, 2, 1, 0]
    assert not page.has_older


def test_a_pruned_cursor_starts_over_from_the_newest(runs: None, login: Login) -> None:
    gone = JobRun.objects.order_by("started_at")[60]
    pk = gone.pk
    gone.delete()
    page = login(OPERATOR).get(reverse("jobs:history"), {"before": pk}).context["page"]
    assert page.runs[0].items_processed == 119


def test_the_count_is_capped_on_a_long_history(
    runs: None, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobs.selectors.HISTORY_COUNT_CAP", 100)
    html = login(OPERATOR).get(reverse("jobs:history")).content.decode()
    assert "more than 100 runs" in html


def test_history_filters_by_job_and_outcome(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(
        reverse("jobs:history"), {"job": Job.MARK_COMPLETED.value, "outcome": "failed"}
    )
    page = response.context["page"]
    assert {(r.job, r.outcome) for r in page.runs} == {(Job.MARK_COMPLETED, "failed")}
    assert (page.count, page.has_older) == (12, False)
    html = response.content.decode()
    assert "Timeout: relay" in html
    assert "12 runs" in html


def test_the_filter_is_kept_across_pages(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:history"), {"job": Job.GENERATE_ITEMS.value})
    html = response.content.decode()
    older = response.context["page"].older_cursor
    assert f"job=campaigns.tasks.generate_items&amp;before={older}" in html


def test_a_bad_filter_is_refused(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:history"), {"outcome": "exploded"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert response.context["page"].runs == []


def test_a_bad_cursor_is_refused(runs: None, login: Login) -> None:
    response = login(OPERATOR).get(reverse("jobs:history"), {"before": "x"})
    assert response.status_code == 400
    assert "Enter a whole number." in response.content.decode()


def test_history_is_refused_to_a_marketer(login: Login) -> None:
    assert login(MARKETER).get(reverse("jobs:history")).status_code == 403
