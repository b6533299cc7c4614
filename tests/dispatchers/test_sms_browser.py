"""Browser test: an administrator creates an SMS dispatcher; the Twilio
fields appear only once the type is SMS, and the sender address fields of
email dispatchers go away (Chromium)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from dispatchers.models import Dispatcher
from tests.browser import CHROMIUM_ARGS, chromium_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture(autouse=True)
def sync_playwright_with_django(monkeypatch) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_the_twilio_fields_show_for_sms_dispatchers_only(live_server, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_path()
    user_create(username="ada", email="ada@herald.test", password="pw-Herald-1", role=ADMINISTRATOR)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(
            f"{live_server.url}/admin/login/?next={reverse('admin:dispatchers_dispatcher_add')}"
        )
        page.fill("#id_username", "ada")
        page.fill("#id_password", "pw-Herald-1")
        page.click("input[type=submit], button[type=submit]")

        expect(page.locator("#id_from_email")).to_be_visible()
        expect(page.locator("#id_twilio_account_sid")).to_be_hidden()

        page.select_option("#id_type", "SMS")
        expect(page.locator("#id_twilio_account_sid")).to_be_visible()
        expect(page.locator("#id_from_email")).to_be_hidden()
        page.fill("#id_name", "Text alerts")
        page.fill("#id_server_name", "mailer1")
        page.fill("#id_twilio_account_sid", "AC" + "0123456789abcdef" * 2)
        page.fill("#id_twilio_auth_token", "not-a-token")
        page.click("input[name=_save]")

        expect(page.locator(".errornote")).to_be_visible()
        expect(page.locator("body")).to_contain_text(
            "A Twilio auth token is 32 hexadecimal characters"
        )
        expect(page.locator("body")).to_contain_text("Give a from number or a messaging service")
        # The form comes back still showing the Twilio fields, token not echoed.
        expect(page.locator("#id_twilio_account_sid")).to_be_visible()
        assert page.input_value("#id_twilio_auth_token") == ""

        page.fill("#id_twilio_auth_token", "9f8e7d6c5b4a3921" * 2)
        page.fill("#id_sms_from_number", "+14155550199")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("was added successfully")
        page.screenshot(path=str(tmp_path / "sms-dispatcher.png"), full_page=True)
        browser.close()

    dispatcher = Dispatcher.objects.get(name="Text alerts")
    assert (dispatcher.type, dispatcher.sms_from_number) == (Dispatcher.Type.SMS, "+14155550199")
    assert dispatcher.twilio_auth_token.reveal() == "9f8e7d6c5b4a3921" * 2
