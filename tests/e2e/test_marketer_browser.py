"""A marketer's whole afternoon in Chromium: import a CSV with bad rows and
read what was refused, write a template, preview it, create and schedule a
campaign, and watch its report reach completed. Screenshots of each step
are kept (HERALD_SCREENSHOT_DIR copies them out)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.roles import MARKETER
from accounts.services import user_create
from campaigns import services
from campaigns.imports import import_run
from campaigns.models import Campaign, ContactList, ImportJob, Template
from dispatchers.services import dispatcher_ensure_local_outbox
from tests.browser import CHROMIUM_ARGS, chromium_path

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

CSV = (
    "Email,First name,Last name,Plan\n"
    "ada@example.org,Ada,Lovelace,gold\n"
    "grace@example.org,Grace,Hopper,free\n"
    "not-an-address,Bad,Row,free\n"
    "alan@example.org,Alan,Turing,gold\n"
    "ada@example.org,Ada,Again,gold\n"
    ",No,Email,free\n"
    "edsger@example.org,Edsger,Dijkstra,free\n"
)


@pytest.fixture(autouse=True)
def sync_playwright_with_django(monkeypatch: pytest.MonkeyPatch) -> None:
    # Playwright's sync API keeps an event loop in this thread; the ORM
    # calls of the test itself are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def keep(page, folder: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(folder / name), full_page=True)
    if os.environ.get("HERALD_SCREENSHOT_DIR"):
        shutil.copy(folder / name, os.environ["HERALD_SCREENSHOT_DIR"])


def test_a_marketer_imports_writes_previews_schedules_and_sees_it_complete(
    live_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    outbox = dispatcher_ensure_local_outbox(directory=str(tmp_path / "outbox"))
    newsletter = ContactList.objects.create(name="Newsletter")
    user_create(username="mara", email="mara@herald.test", password="pw-Herald-1", role=MARKETER)
    upload = tmp_path / "contacts.csv"
    upload.write_text(CSV)
    url = live_server.url

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{url}/admin/login/?next=/contacts/import/")
        page.fill("#id_username", "mara")
        page.fill("#id_password", "pw-Herald-1")
        page.click("input[type=submit], button[type=submit]")

        # 1. Import, mapping the columns in the browser.
        page.set_input_files("input[type=file]", str(upload))
        page.click("text=Upload and map columns")
        page.select_option("select[name=contact_list]", label="Newsletter")
        keep(page, tmp_path, "1-mapping.png")
        page.click("text=Start the import")
        import_run(job_id=ImportJob.objects.get().pk)  # what the worker does
        page.reload()
        expect(page.get_by_text("not-an-address")).to_be_visible()
        expect(page.get_by_text("duplicate", exact=False).first).to_be_visible()
        keep(page, tmp_path, "2-import-report.png")
        assert newsletter.contacts.count() == 4

        # 2. A template, previewed for Ada.
        page.goto(f"{url}/admin/campaigns/template/add/")
        page.fill("#id_name", "November news")
        page.fill("#id_subject", "News for {{ contact.first_name }}")
        page.fill("#id_html_body", "<p>Dear {{ contact.first_name }}, our news.</p>")
        page.click("input[name=_save]")
        template = Template.objects.get(name="November news")
        ada = newsletter.contacts.get(email="ada@example.org")
        page.goto(f"{url}/templates/{template.pk}/preview/?contact={ada.pk}")
        frame = page.frame_locator("iframe.herald-preview-frame")
        expect(frame.get_by_text("Dear Ada, our news.")).to_be_visible()
        keep(page, tmp_path, "3-preview.png")

        # 3. The campaign, created and scheduled.
        page.goto(f"{url}/admin/campaigns/campaign/add/")
        page.fill("#id_name", "November")
        page.select_option("#id_template", label="November news")
        page.select_option("#id_dispatcher", label=outbox.name)
        page.select_option("#id_lists_from", label="Newsletter")
        page.click("#id_lists_add")
        page.click("input[name=_save]")
        campaign = Campaign.objects.get(name="November")
        page.goto(f"{url}/admin/campaigns/campaign/")
        page.check(f"input[name=_selected_action][value='{campaign.pk}']")
        page.select_option("select[name=action]", "schedule_now")
        page.click("button[name=index]")
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.SCHEDULED

        # 4. The report, live, while the jobs send it.
        page.goto(f"{url}/campaigns/{campaign.pk}/")
        page.evaluate("window.__notReloaded = true")
        services.items_generate()
        while (batch := services.batch_claim(dispatcher_id=outbox.pk)) is not None:
            services.batch_send(batch_id=batch.pk)
        services.campaigns_complete(now=timezone.now())
        expect(page.locator('[data-report="status"]')).to_have_text("Completed", timeout=15_000)
        expect(page.locator('[data-report="sent"]')).to_have_text("4")
        # The actions follow the status: nothing left to pause or cancel.
        expect(page.locator(".herald-actions")).to_contain_text("Duplicate")
        expect(page.locator(".herald-actions")).not_to_contain_text("Pause")
        assert page.evaluate("window.__notReloaded") is True
        keep(page, tmp_path, "4-report-completed.png")
        browser.close()

    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 4
