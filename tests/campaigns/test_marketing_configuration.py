"""The Marketing configuration page: footers a marketer edits once."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.services import user_create
from campaigns.models import MarketingConfiguration
from tests.helpers import make_dispatcher

pytestmark = pytest.mark.django_db


def login(client: Client, role: str) -> Client:
    user = user_create(username="pat", email="pat@example.org", password="x-Pass-4567", role=role)
    client.force_login(user)
    return client


def test_a_marketer_edits_the_footers_and_sees_the_sending_sizes(client: Client) -> None:
    make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    login(client, "Marketer")
    response = client.get(reverse("admin:campaigns_marketingconfiguration_changelist"), follow=True)
    page = response.content.decode()
    assert "Unsubscribe: {{ unsubscribe_url }}" in page  # the default footer
    assert "Campaign batch size" in page and "Items creation page size" in page
    url = response.redirect_chain[-1][0]
    saved = client.post(
        url, {"text_footer": "Bye {{ contact.first_name }}", "html_footer": "<p>Bye</p>"}
    )
    assert saved.status_code == 302
    assert MarketingConfiguration.load().text_footer == "Bye {{ contact.first_name }}"


def test_a_footer_with_a_template_error_is_refused_and_nothing_saved(client: Client) -> None:
    login(client, "Marketer")
    url = reverse(
        "admin:campaigns_marketingconfiguration_change", args=[MarketingConfiguration.load().pk]
    )
    response = client.post(url, {"text_footer": "{% if %}", "html_footer": ""})
    assert response.status_code == 200
    assert "Template error" in response.content.decode()
    assert "{% if %}" not in MarketingConfiguration.load().text_footer


def test_operators_cannot_change_the_footers(client: Client) -> None:
    login(client, "Operator")
    response = client.get(reverse("admin:campaigns_marketingconfiguration_changelist"))
    assert response.status_code in (302, 403)
    assert not MarketingConfiguration.objects.exists()
