"""Browser test: an operator opens the job manager, runs a job now, and sees
its new run appear without reloading the page (Chromium, a real worker)."""

from __future__ import annotations

import os
import shutil

import pytest
from django_celery_beat.models import PeriodicTask

from accounts.roles import OPERATOR
from accounts.services import user_create
from jobs.models import Job, JobRun
from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.workers import JOB_QUEUE, celery_env, running, start_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture(autouse=True)
def sync_playwright_with_django(monkeypatch) -> None:
    # Playwright's sync API keeps an event loop in this thread; the ORM
    # calls of the test itself are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_an_operator_runs_a_job_and_sees_the_run_appear_without_reloading(
    live_server, tmp_path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    user_create(username="olga", email="olga@herald.test", password="pw-Herald-1", role=OPERATOR)
    # Run-now sends on the queue of the job's beat schedule: this run's own.
    PeriodicTask.objects.filter(task=Job.MARK_COMPLETED.value).update(queue=JOB_QUEUE)
    worker = start_worker(
        [JOB_QUEUE], tmp_path / f"jobsbrowser{os.getpid()}.log", celery_env(), concurrency=1
    )
    with running(worker), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{live_server.url}/admin/login/?next=/jobs/")
        page.fill("#id_username", "olga")
        page.fill("#id_password", "pw-Herald-1")
        page.click("input[type=submit], button[type=submit]")
        expect(page.locator("#job-mark_completed")).to_be_visible()
        runs = page.locator(".herald-runs-table tbody")
        expect(runs).to_contain_text("No run yet")

        page.locator("#job-mark_completed").get_by_role("button", name="Run now").click()
        expect(page.locator(".messagelist")).to_contain_text("was sent to the workers")
        page.evaluate("window.__notReloaded = true")

        expect(runs).to_contain_text("Mark campaigns as completed", timeout=30_000)
        assert page.evaluate("window.__notReloaded") is True  # the same page, refreshed in place
        expect(page.locator(".herald-actions-table")).to_contain_text("olga")
        page.screenshot(path=str(tmp_path / "job-manager.png"), full_page=True)
        if os.environ.get("HERALD_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "job-manager.png", os.environ["HERALD_SCREENSHOT_DIR"])
        browser.close()
    assert JobRun.objects.filter(job=Job.MARK_COMPLETED, outcome="ok").count() == 1
