"""API tokens: made in the admin, shown once, kept only as a hash, and
refused once revoked."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from accounts.roles import ADMINISTRATOR, MARKETER
from accounts.services import user_create
from api.models import ApiToken
from api.services import token_create, token_revoke


def _admin_creates_token(client: Client, **fields: Any) -> tuple[str, Any]:
    response = client.post("/admin/api/apitoken/add/", {"name": "CRM sync", **fields}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    found = [re.search(r"token for CRM sync: (\S+)", m) for m in shown]
    raws = [m.group(1) for m in found if m]
    assert len(raws) == 1, shown
    return raws[0], response


def _bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_a_token_made_in_the_admin_is_shown_once_and_stored_hashed(db: None) -> None:
    admin = user_create(username="ada", email="ada@herald.test", password="pw", role=ADMINISTRATOR)
    browser = Client()
    browser.force_login(admin)
    raw, _ = _admin_creates_token(browser, user=admin.pk)

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM api_apitoken")
        rows = cursor.fetchall()
    assert len(rows) == 1
    assert not any(raw in str(value) for value in rows[0])
    token = ApiToken.objects.get()
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:8] and token.user == admin

    page = browser.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    listing = browser.get("/admin/api/apitoken/").content.decode()
    assert raw not in page and raw not in listing
    assert token.prefix in listing

    assert _bearer(raw).get("/api/v1/contacts/").status_code == 200


def test_a_revoked_token_is_refused_with_401(db: None) -> None:
    user = user_create(username="mia", email="mia@herald.test", password="pw", role=MARKETER)
    token, raw = token_create(user=user, name="script")
    assert _bearer(raw).get("/api/v1/contacts/").status_code == 200

    token_revoke(token=token)

    response = _bearer(raw).get("/api/v1/contacts/")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == "Bearer"


def test_the_admin_revokes_tokens_with_an_action(db: None) -> None:
    admin = user_create(username="ada", email="ada@herald.test", password="pw", role=ADMINISTRATOR)
    token, raw = token_create(user=admin, name="old script")
    browser = Client()
    browser.force_login(admin)
    browser.post(
        "/admin/api/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert _bearer(raw).get("/api/v1/contacts/").status_code == 401


def test_unknown_missing_and_malformed_tokens_get_401_json(db: None) -> None:
    assert _bearer("not-a-token").get("/api/v1/contacts/").status_code == 401
    anonymous = APIClient().get("/api/v1/contacts/")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "not_authenticated"
    two_words = APIClient()
    two_words.credentials(HTTP_AUTHORIZATION="Bearer a b")
    assert two_words.get("/api/v1/contacts/").json()["code"] == "authentication_failed"


def test_a_deactivated_user_s_tokens_stop_working(db: None) -> None:
    user = User.objects.create_user(username="gone", password="pw")
    _, raw = token_create(user=user, name="script")
    user.is_active = False
    user.save()
    assert _bearer(raw).get("/api/v1/contacts/").status_code == 401


def test_someone_who_may_not_change_every_token_sees_and_makes_only_their_own(
    db: None,
) -> None:
    # As marketers and operators will, once their roles hold add, view and
    # delete of API tokens (but not change).
    from django.contrib.auth.models import Permission

    mia = user_create(username="mia", email="mia@herald.test", password="pw", role=MARKETER)
    mia.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="api",
            codename__in=["add_apitoken", "view_apitoken", "delete_apitoken"],
        )
    )
    other = user_create(username="ada", email="ada@herald.test", password="pw", role=ADMINISTRATOR)
    token_create(user=other, name="Ada script")
    browser = Client()
    browser.force_login(mia)

    raw, _ = _admin_creates_token(browser, user=other.pk)

    assert ApiToken.objects.get(name="CRM sync").user == mia
    listing = browser.get("/admin/api/apitoken/").content.decode()
    assert "CRM sync" in listing and "Ada script" not in listing
    assert _bearer(raw).get("/api/v1/contacts/").status_code == 200
