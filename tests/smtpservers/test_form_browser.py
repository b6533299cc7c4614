"""Browser test of the SMTP server form's script (Chromium): the port
follows the encryption while it is a usual one, "Reset to default" puts
back 25, the warnings show as the settings change, and the POP3 port
follows the POP3 encryption."""

from __future__ import annotations

import pytest

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from smtpservers.models import SmtpServer
from tests.browser import CHROMIUM_ARGS, chromium_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture(autouse=True)
def sync_playwright_with_django(monkeypatch: pytest.MonkeyPatch) -> None:
    # Playwright's sync API keeps an event loop in this thread; the ORM
    # calls of the test itself are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_the_form_suggests_ports_resets_and_warns(live_server, settings) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    chromium = chromium_path()
    user_create(username="ada", email="ada@herald.test", password="pw-Herald-1", role=ADMINISTRATOR)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{live_server.url}/admin/login/?next=/admin/smtpservers/smtpserver/add/")
        page.fill("#id_username", "ada")
        page.fill("#id_password", "pw-Herald-1")
        page.click("input[type=submit]")

        port, security = page.locator("#id_port"), page.locator("#id_security")
        hint = page.locator(".herald-port-hint")
        expect(port).to_have_value("25")
        security.select_option("ssl")
        expect(port).to_have_value("465")
        security.select_option("starttls")
        expect(port).to_have_value("587")

        # A port typed by hand stays; the usual one is only suggested.
        port.fill("2525")
        expect(hint).to_have_text("The usual port for this encryption is 587.")
        security.select_option("ssl")
        expect(port).to_have_value("2525")
        expect(hint).to_have_text("The usual port for this encryption is 465.")
        page.get_by_role("button", name="Reset to default (25)").click()
        expect(port).to_have_value("25")

        verify_warning = page.locator("#herald-verify-warning")
        expect(verify_warning).to_be_hidden()
        page.locator("#id_verify_certificate").uncheck()
        expect(verify_warning).to_be_visible()
        expect(verify_warning).to_contain_text("Certificate verification is off")
        security.select_option("none")  # nothing to verify without TLS
        expect(verify_warning).to_be_hidden()

        insecure = page.locator("#herald-insecure-auth-warning")
        page.locator("#id_auth_method").select_option("clear")
        expect(insecure).to_be_visible()
        security.select_option("starttls")
        expect(insecure).to_be_hidden()
        expect(verify_warning).to_be_visible()  # still unticked
        page.locator("#id_verify_certificate").check()
        expect(verify_warning).to_be_hidden()

        oauth = page.locator("fieldset.herald-oauth")
        expect(oauth).to_be_hidden()
        page.locator("#id_auth_method").select_option("oauth2")
        expect(oauth).to_be_visible()

        pop_port, pop_security = page.locator("#id_pop_port"), page.locator("#id_pop_security")
        pop_port.fill("110")
        pop_security.select_option("ssl")
        expect(pop_port).to_have_value("995")
        pop_security.select_option("starttls")
        expect(pop_port).to_have_value("110")
        browser.close()
    assert not SmtpServer.objects.exists()  # nothing was submitted
