"""My outbound server: a user picks the SMTP server for the test sends they
make from the UI, among those an administrator offers for it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse

from accounts.roles import MARKETER
from accounts.services import user_create
from smtpservers.models import PersonalServer, SmtpServer
from smtpservers.services import personal_server_for

pytestmark = pytest.mark.django_db

PAGE = reverse("smtpservers:personal")


def make(name: str, **fields: object) -> SmtpServer:
    return SmtpServer.objects.create(name=name, host=f"{name.lower()}.example.org", **fields)


@pytest.fixture
def ann(key: str) -> AbstractUser:
    return user_create(
        username="ann", email="ann@herald.test", password="pw-Ann-123", role=MARKETER
    )


@pytest.fixture
def browser(client: Client, ann: AbstractUser) -> Client:
    client.force_login(ann)
    return client


def test_a_marketer_picks_a_server_for_their_test_sends(browser: Client, ann: AbstractUser) -> None:
    mine = make("Mailbox", personal_use=True)
    make("Campaign relay")  # not offered: not listed
    page = browser.get(PAGE).content.decode()
    assert "Your test sends use the dispatcher's server." in page
    assert "Mailbox" in page and "Campaign relay" not in page
    assert "My outbound server" in page  # linked from the header

    response = browser.post(PAGE, {"smtp_server": mine.pk}, follow=True)
    assert "Your test sends go through “Mailbox”." in response.content.decode()
    assert personal_server_for(user=ann) == mine

    browser.post(PAGE, {"smtp_server": ""})
    assert personal_server_for(user=ann) is None
    assert not PersonalServer.objects.exists()


def test_a_server_not_offered_is_refused_and_nothing_changes(
    browser: Client, ann: AbstractUser
) -> None:
    mine = make("Mailbox", personal_use=True)
    browser.post(PAGE, {"smtp_server": mine.pk})
    relay = make("Campaign relay")
    closed = make("Closed", personal_use=True, is_active=False)
    for forged in (relay.pk, closed.pk, 999_999, "x"):
        response = browser.post(PAGE, {"smtp_server": forged})
        assert response.status_code == 400
        assert "not offered as a personal outbound server" in response.content.decode()
    assert personal_server_for(user=ann) == mine


def test_a_server_later_deactivated_or_withdrawn_is_no_longer_used(
    browser: Client, ann: AbstractUser
) -> None:
    mine = make("Mailbox", personal_use=True)
    browser.post(PAGE, {"smtp_server": mine.pk})
    SmtpServer.objects.filter(pk=mine.pk).update(is_active=False)
    assert personal_server_for(user=ann) is None
    SmtpServer.objects.filter(pk=mine.pk).update(is_active=True, personal_use=False)
    assert personal_server_for(user=ann) is None
    SmtpServer.objects.filter(pk=mine.pk).update(personal_use=True)
    assert personal_server_for(user=ann) == mine


def test_each_user_has_their_own_choice(browser: Client, ann: AbstractUser) -> None:
    mine = make("Mailbox", personal_use=True)
    browser.post(PAGE, {"smtp_server": mine.pk})
    bob = user_create(username="bob", email="bob@herald.test", password="pw-Bob-123", role=MARKETER)
    assert personal_server_for(user=bob) is None


def test_the_page_needs_a_login(client: Client) -> None:
    response = client.get(PAGE)
    assert response.status_code == 302
    assert "login" in response["Location"]
