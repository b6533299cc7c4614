"""Browser tests (Chromium): the report of a sending campaign updates in
place as items are sent, and a script in a template's HTML does not run in
the preview."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.roles import MARKETER
from accounts.services import user_create
from campaigns.models import Campaign, CampaignItem, Contact
from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.campaigns.cast import bulk_items
from tests.helpers import make_campaign, make_dispatcher, make_template

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture(autouse=True)
def sync_playwright_with_django(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Playwright's sync API keeps an event loop in this thread; the ORM
    # calls of the test itself are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    cache.clear()


def log_in(page, live_server, next_url: str) -> None:  # type: ignore[no-untyped-def]
    user_create(username="mara", email="mara@herald.test", password="pw-Herald-1", role=MARKETER)
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", "mara")
    page.fill("#id_password", "pw-Herald-1")
    page.click("input[type=submit], button[type=submit]")


def keep(page, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("HERALD_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / name, os.environ["HERALD_SCREENSHOT_DIR"])


def test_the_report_shows_sends_as_they_happen_without_reloading(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    campaign = make_campaign(dispatcher=make_dispatcher(), lists=[], status=Campaign.Status.SENDING)
    ids = bulk_items(campaign, 40)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        log_in(page, live_server, f"/campaigns/{campaign.pk}/")
        sent = page.locator('[data-report="sent"]')
        expect(sent).to_have_text("0")
        expect(page.locator('[data-report="pending"]')).to_have_text("40")
        page.evaluate("window.__notReloaded = true")

        CampaignItem.objects.filter(contact_id__in=ids[:25]).update(
            status=CampaignItem.Status.SENT, sent_at=timezone.now()
        )
        cache.clear()  # as after the counts' few seconds

        expect(sent).to_have_text("25", timeout=15_000)
        expect(page.locator('[data-report="pending"]')).to_have_text("15")
        expect(page.locator('[data-report="progress"]')).to_have_text("25 / 40 (62%)")
        expect(page.locator(".herald-report-chart rect")).to_have_count(1)
        assert page.evaluate("window.__notReloaded") is True  # refreshed in place
        keep(page, tmp_path, "campaign-report.png")
        browser.close()


def test_a_script_in_the_template_does_not_run_in_the_preview(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    template = make_template(
        html_body='<p id="greeting">Dear {{ contact.first_name }}</p>'
        "<script>document.getElementById('greeting').textContent = 'SCRIPT RAN';"
        "parent.document.title = 'SCRIPT RAN';</script>"
        '<img src="data:," onerror="document.getElementById(\'greeting\').textContent = '
        "'HANDLER RAN'\">"
    )
    ada = Contact.objects.create(email="ada@example.org", first_name="Ada")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(page, live_server, f"/templates/{template.pk}/preview/?contact={ada.pk}")
        frame = page.frame_locator("iframe.herald-preview-frame")
        expect(frame.locator("#greeting")).to_have_text("Dear Ada")
        page.wait_for_timeout(500)  # time for a script or handler to have run
        expect(frame.locator("#greeting")).to_have_text("Dear Ada")
        assert "SCRIPT RAN" not in page.title()
        keep(page, tmp_path, "template-preview.png")
        browser.close()
