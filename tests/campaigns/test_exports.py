"""CSV export of contacts and suppressions: streamed, formula-safe, and only
for those allowed to see them."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from accounts.services import user_create
from campaigns.exports import csv_safe
from campaigns.models import Contact, ContactList, Subscription, Suppression

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login(client: Client, role: str) -> Client:
    user = user_create(
        username=role.lower(), email=f"{role.lower()}@example.org", password="x", role=role
    )
    client.force_login(user)
    return client


def download(client: Client, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+33 1 23", "'+33 1 23"),
        ("-5", "'-5"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("Jane = Doe", "Jane = Doe"),
        ("", ""),
        (None, ""),
        (True, "true"),
        (42, "42"),
        (-1.5, "'-1.5"),
        ({"a": 1}, '{"a": 1}'),
    ],
)
def test_cells_that_look_like_formulas_get_a_quote(value: Any, cell: str) -> None:
    assert csv_safe(value) == cell


def test_contacts_export_is_formula_safe_with_attribute_columns(client: Client) -> None:
    Contact.objects.create(
        email="jane@example.org",
        first_name='=HYPERLINK("http://evil.example","x")',
        last_name="@SUM(1)",
        phone="+15551234567",
        attributes={"plan": "-gold", "score": 42, "vip": True},
    )
    Contact.objects.create(email="bob@example.org", first_name="Bob", attributes={"city": "Oslo"})
    login(client, MARKETER)

    rows = download(client, reverse("campaigns:contact_export"))

    assert rows[0] == [
        "email",
        "phone",
        "first_name",
        "last_name",
        "language",
        "time_zone",
        "status",
        "source",
        "created_at",
        "city",
        "plan",
        "score",
        "vip",
    ]
    jane = rows[1]
    assert jane[:4] == [
        "jane@example.org",
        "'+15551234567",
        '\'=HYPERLINK("http://evil.example","x")',
        "'@SUM(1)",
    ]
    assert jane[9:] == ["", "'-gold", "42", "true"]
    assert rows[2][0] == "bob@example.org" and rows[2][9:] == ["Oslo", "", "", ""]
    assert len(rows) == 3


def test_contacts_export_follows_list_and_status(client: Client) -> None:
    customers = ContactList.objects.create(name="Customers")
    for email, status in [("a@example.org", "active"), ("b@example.org", "unsubscribed")]:
        contact = Contact.objects.create(email=email, status=status)
        Subscription.objects.create(contact=contact, contact_list=customers)
    Contact.objects.create(email="c@example.org")
    login(client, MARKETER)
    url = reverse("campaigns:contact_export")

    assert [r[0] for r in download(client, f"{url}?list={customers.pk}")[1:]] == [
        "a@example.org",
        "b@example.org",
    ]
    assert [r[0] for r in download(client, f"{url}?list={customers.pk}&status=active")[1:]] == [
        "a@example.org"
    ]
    assert client.get(f"{url}?status=nonsense").status_code == 404


def test_suppressions_export(client: Client) -> None:
    Suppression.objects.create(pattern="*@blocked.example", reason="=competitor")
    Suppression.objects.create(pattern="x@example.org", reason="asked", source="complaint")
    login(client, MARKETER)

    rows = download(client, reverse("campaigns:suppression_export"))

    assert [r[:3] for r in rows] == [
        ["pattern", "reason", "source"],
        ["*@blocked.example", "'=competitor", "manual"],
        ["x@example.org", "asked", "complaint"],
    ]


@pytest.mark.parametrize("role, status", [(MARKETER, 200), (OPERATOR, 403), (ADMINISTRATOR, 200)])
def test_exports_per_role(client: Client, role: str, status: int) -> None:
    login(client, role)
    assert client.get(reverse("campaigns:contact_export")).status_code == status
    assert client.get(reverse("campaigns:suppression_export")).status_code == status


def test_anonymous_users_cannot_export(client: Client) -> None:
    response = client.get(reverse("campaigns:contact_export"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
