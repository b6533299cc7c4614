"""The troubleshooting endpoint: aggregated sending indicators for support
staff, behind tokens an administrator makes and revokes, and nothing
personal in what it shows."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client

from accounts.roles import ADMINISTRATOR, OPERATOR
from campaigns.models import Campaign, CampaignItem, Contact
from dispatchers.models import Dispatcher
from jobs.models import Job, SupportToken
from jobs.services import job_run_record, support_token_create, support_token_revoke
from tests.helpers import make_campaign, make_dispatcher, make_template

from .conftest import Login

pytestmark = pytest.mark.django_db

URL = "/troubleshooting"


def _get(client: Client, raw: str | None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"} if raw is not None else {}
    return client.get(URL, **headers)


def _admin_creates_token(client: Client) -> str:
    response = client.post("/admin/jobs/supporttoken/add/", {"name": "Vendor support"}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    raws = [m.group(1) for s in shown if (m := re.search(r"token for Vendor support: (\S+)", s))]
    assert len(raws) == 1, shown
    return raws[0]


def test_it_refuses_a_request_without_a_token(client: Client) -> None:
    response = _get(client, None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["error"]


def test_it_refuses_a_wrong_token(client: Client) -> None:
    support_token_create(name="Vendor support", user=None)
    response = _get(client, "hts_not-a-token-anyone-made")
    assert response.status_code == 403
    assert response.json() == {"error": "This token is unknown or was revoked."}


def test_it_refuses_a_revoked_token(client: Client) -> None:
    token, raw = support_token_create(name="Vendor support", user=None)
    assert _get(client, raw).status_code == 200
    assert support_token_revoke(token=token)
    assert _get(client, raw).status_code == 403


def test_an_administrator_makes_a_token_shown_once_and_revokes_it(login: Login) -> None:
    browser = login(ADMINISTRATOR)
    raw = _admin_creates_token(browser)
    token = SupportToken.objects.get()
    assert raw not in token.key_hash and token.prefix == raw[:8]
    page = browser.get(f"/admin/jobs/supporttoken/{token.pk}/change/").content.decode()
    assert raw not in page  # shown once, never again

    assert _get(Client(), raw).status_code == 200
    browser.post("/admin/jobs/supporttoken/", {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert _get(Client(), raw).status_code == 403


def test_an_operator_may_not_make_tokens(login: Login) -> None:
    browser = login(OPERATOR)
    response = browser.post("/admin/jobs/supporttoken/add/", {"name": "Mine"})
    assert response.status_code == 403
    assert not SupportToken.objects.exists()


PEOPLE = [
    ("alice.smith@example.org", "Alice", "Smith"),
    ("bob.jones@mail.example.net", "Bob", "Jones"),
    ("carol.whitaker@example.com", "Carol", "Whitaker"),
    ("dmitri.ivanov@example.org", "Dmitri", "Ivanov"),
]


def _seed_failures() -> Dispatcher:
    dispatcher = make_dispatcher(name="Relay")
    template = make_template(subject="Your private offer, {{ contact.first_name }}")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[], template=template, status=Campaign.Status.SENDING
    )
    alice, bob, carol, dmitri = Contact.objects.bulk_create(
        Contact(email=e, first_name=f, last_name=last) for e, f, last in PEOPLE
    )
    CampaignItem.objects.bulk_create(
        [
            CampaignItem(
                campaign=campaign,
                contact=alice,
                status="failed",
                smtp_code=550,
                smtp_response="5.1.1 <alice.smith@example.org>: Recipient address rejected: "
                "User unknown in virtual mailbox table",
            ),
            CampaignItem(
                campaign=campaign,
                contact=bob,
                status="failed",
                smtp_code=550,
                smtp_response="5.1.1 The email account that you tried to reach does not exist "
                "(bob.jones, Bob Jones)",
            ),
            CampaignItem(
                campaign=campaign,
                contact=carol,
                status="deferred",
                smtp_code=452,
                smtp_response="4.2.2 Mailbox full: Carol Whitaker <carol.whitaker@example.com>",
            ),
            CampaignItem(campaign=campaign, contact=dmitri, status="sent", smtp_code=250),
        ]
    )
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        consecutive_failures=2,
        last_error="554 5.7.1 Relay access denied for bob.jones@mail.example.net",
    )

    def fails() -> int:
        raise RuntimeError("could not parse bounce for dmitri.ivanov@example.org")

    with pytest.raises(RuntimeError):
        job_run_record(job=Job.PROCESS_BOUNCES, work=fails)
    job_run_record(job=Job.MARK_COMPLETED, work=lambda: 3)
    return dispatcher


def test_it_shows_indicators_and_no_personal_data(client: Client) -> None:
    _seed_failures()
    _, raw = support_token_create(name="Vendor support", user=None)

    response = _get(client, raw)
    assert response.status_code == 200
    body = response.content.decode()
    for email, first, last in PEOPLE:
        for personal in (email, email.partition("@")[0], first, last):
            assert personal.lower() not in body.lower(), personal
    assert "private offer" not in body  # no subject or content
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", body), "an address-like string is shown"

    data = json.loads(body)
    assert data["messages_by_dispatcher"]["Relay"] == {"sent": 1, "failed": 2}
    relay = next(d for d in data["dispatchers"] if d["name"] == "Relay")
    assert (relay["deferred"], relay["consecutive_failures"]) == (1, 2)
    assert relay["last_error"] == "554 5.7.1 Relay access denied for <redacted>"

    classes = {(c["outcome"], c["smtp_code"], c["enhanced_code"]): c for c in data["error_classes"]}
    unknown_user = classes[("failed", 550, "5.1.1")]
    assert (unknown_user["count"], unknown_user["class"]) == (2, "permanent: addressing status")
    assert "account that you tried to reach does not exist" in unknown_user["last_error"]
    full = classes[("deferred", 452, "4.2.2")]
    assert (full["count"], full["class"]) == (1, "transient: mailbox status")
    assert full["last_error"] == "4.2.2 Mailbox full: <redacted> <redacted>"

    jobs = {j["job"]: j for j in data["jobs"]}
    bounces = jobs["process_bounces"]
    assert bounces["last_outcome"] == "failed"
    assert bounces["last_error"] == "RuntimeError: could not parse bounce for <redacted>"
    done = jobs["mark_completed"]
    assert (done["last_outcome"], done["last_items_processed"]) == ("ok", 3)
    assert done["last_duration_seconds"] is not None
