"""The branded admin: login page, dashboard, and what each role sees there."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse

from accounts.roles import MARKETER, OPERATOR
from accounts.services import user_create
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Template
from dispatchers.models import Dispatcher

pytestmark = pytest.mark.django_db

PAUSE_REASON = "SMTP 421: too many connections from your IP"


def make_user(role: str) -> AbstractUser:
    name = role.lower()
    return user_create(
        username=name, email=f"{name}@herald.test", password="pw-Herald-1", role=role
    )


def make_dispatcher(name: str, **extra: object) -> Dispatcher:
    return Dispatcher.objects.create(
        name=name,
        server_name="mailer1",
        from_email="news@herald.test",
        delivery_mode=Dispatcher.DeliveryMode.PICKUP,
        pickup_directory="/tmp/herald-outbox",
        **extra,
    )


def make_campaign(name: str, status: str, items: dict[str, int]) -> Campaign:
    """A campaign whose items stand in the given statuses (status -> count)."""
    template, _ = Template.objects.get_or_create(
        name="News", defaults={"subject": "News", "text_body": "Hello"}
    )
    dispatcher = Dispatcher.objects.first() or make_dispatcher("Newsletter relay")
    campaign = Campaign.objects.create(
        name=name, template=template, dispatcher=dispatcher, status=status
    )
    start = Contact.objects.count()
    contacts = Contact.objects.bulk_create(
        Contact(email=f"person{start + i}@example.org") for i in range(sum(items.values()))
    )
    statuses = [s for s, n in items.items() for _ in range(n)]
    CampaignItem.objects.bulk_create(
        CampaignItem(campaign=campaign, contact=c, status=s)
        for c, s in zip(contacts, statuses, strict=True)
    )
    return campaign


def dashboard(client: Client, role: str) -> str:
    client.force_login(make_user(role))
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    return response.content.decode()


def test_login_page_shows_herald_branding(client: Client) -> None:
    response = client.get(reverse("admin:login"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "<title>Log in | Herald</title>" in html
    assert "herald/logo.svg" in html
    assert "herald/herald.css" in html
    assert "Campaign email and SMS" in html
    assert "Django administration" not in html


def test_dashboard_shows_a_sending_campaigns_progress(client: Client) -> None:
    make_campaign(
        "November newsletter",
        Campaign.Status.SENDING,
        {"sent": 1200, "failed": 30, "skipped": 70, "deferred": 100, "pending": 600},
    )

    html = dashboard(client, MARKETER)

    assert "November newsletter" in html
    assert "Sending" in html
    assert "(65%)" in html  # 1,300 of 2,000 done
    assert "1,200 sent" in html
    assert "30 failed" in html
    assert "70 skipped" in html
    assert "100 retrying" in html
    assert "600 waiting" in html
    assert "width: 60%" in html  # the green, sent part of the bar


def test_dashboard_lists_live_campaigns_only(client: Client) -> None:
    make_campaign("Paused reminder", Campaign.Status.PAUSED, {"sent": 1, "pending": 1})
    make_campaign("Summer draft", Campaign.Status.DRAFT, {})
    make_campaign("October newsletter", Campaign.Status.COMPLETED, {"sent": 2})

    html = dashboard(client, MARKETER)

    assert "Paused reminder" in html
    assert "Summer draft" not in html
    assert "October newsletter" not in html


def test_dashboard_says_when_nothing_is_sending(client: Client) -> None:
    html = dashboard(client, MARKETER)

    assert "Nothing is sending or scheduled right now." in html
    assert reverse("admin:campaigns_campaign_add") in html


def test_marketer_sees_the_audience_but_no_dispatchers(client: Client) -> None:
    make_dispatcher("Office 365 relay", is_enabled=False, paused_reason=PAUSE_REASON)
    ContactList.objects.create(name="Newsletter")
    Contact.objects.bulk_create(Contact(email=f"p{i}@example.org") for i in range(1234))

    html = dashboard(client, MARKETER)

    assert "1,234" in html  # contacts
    assert "Office 365 relay" not in html
    assert PAUSE_REASON not in html
    assert "Manage dispatchers" not in html
    assert reverse("jobs:manager") not in html


def test_operator_sees_each_dispatchers_state_and_why_it_is_paused(client: Client) -> None:
    make_dispatcher("Newsletter relay")
    make_dispatcher("Office 365 relay", is_enabled=False, paused_reason=PAUSE_REASON)

    html = dashboard(client, OPERATOR)

    assert "Newsletter relay" in html
    assert "Office 365 relay" in html
    assert "Enabled" in html
    assert "Paused" in html
    assert PAUSE_REASON in html
    assert reverse("jobs:manager") in html  # the Job manager in the top bar


def test_operator_sees_live_campaigns_too(client: Client) -> None:
    make_campaign("November newsletter", Campaign.Status.SENDING, {"sent": 1, "pending": 3})

    html = dashboard(client, OPERATOR)

    assert "November newsletter" in html
    assert "(25%)" in html


def test_operator_sees_what_paused_itself_and_marketer_does_not(client: Client) -> None:
    from jobs.services import notification_raise

    notification_raise(
        key="dispatcher:1:paused",
        title="Dispatcher Newsletter relay paused itself",
        message="Paused after 5 failed connections: 535 Authentication failed",
        level="error",
    )

    operator_html = dashboard(client, OPERATOR)
    client.logout()
    marketer_html = dashboard(Client(), MARKETER)

    assert "Needs attention" in operator_html
    assert "Dispatcher Newsletter relay paused itself" in operator_html
    assert "535 Authentication failed" in operator_html
    assert "Needs attention" not in marketer_html
