"""Bad input gets a 4xx in one JSON shape — {code, message, details} —
never an HTML page and never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.models import Template

from .conftest import Cast


def _shape(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_malformed_json_is_a_parse_error(marketer: Any, db: None) -> None:
    response = marketer.post(
        "/api/v1/contacts/", '{"email": "a@example.org",', content_type="application/json"
    )
    assert response.status_code == 400
    assert _shape(response)["code"] == "parse_error"


def test_a_body_that_is_not_json_is_refused(marketer: Any, db: None) -> None:
    response = marketer.post("/api/v1/lists/", "name=VIP", content_type="text/plain")
    assert response.status_code == 415
    assert _shape(response)["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        (
            "/api/v1/templates/",
            {"name": "T", "subject": "Hi\r\nBcc: x@y.z", "text_body": "b"},
            "subject",
        ),
        (
            "/api/v1/templates/",
            {"name": "T", "subject": "Hi", "text_body": "{% if %}"},
            "text_body",
        ),
        ("/api/v1/contacts/", {"email": "a@example.org", "first_name": "A\nB"}, "first_name"),
        ("/api/v1/contacts/", {"email": ["a@example.org"]}, "email"),
        ("/api/v1/contacts/", {"email": "a@example.org", "phone": "12"}, "phone"),
        (
            "/api/v1/contacts/",
            {"email": "a@example.org", "attributes": {"k": "\u0000"}},
            "attributes",
        ),
        ("/api/v1/contacts/", {"email": "a@example.org", "status": "sleeping"}, "status"),
        ("/api/v1/lists/", {"name": {"a": 1}}, "name"),
        ("/api/v1/lists/", {"name": "x" * 500}, "name"),
        ("/api/v1/suppressions/", {"pattern": "example.org"}, "pattern"),
        ("/api/v1/campaigns/", {"name": "C", "template": "one", "lists": []}, "template"),
    ],
)
def test_bad_fields_are_reported_per_field(
    marketer: Any, db: None, url: str, body: dict[str, Any], field: str
) -> None:
    response = marketer.post(url, body, format="json")
    assert response.status_code == 400, response.content
    shaped = _shape(response)
    assert shaped["code"] == "invalid"
    assert field in shaped["details"], shaped
    assert not Template.objects.exists()


def test_a_body_that_is_a_list_instead_of_an_object_is_400(marketer: Any, db: None) -> None:
    response = marketer.post("/api/v1/lists/", [1, 2], format="json")
    assert response.status_code == 400
    assert _shape(response)["code"] == "invalid"


def test_an_unknown_api_path_answers_json_404(marketer: Any, db: None) -> None:
    response = marketer.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert _shape(response)["code"] == "not_found"
    missing = marketer.get("/api/v1/contacts/99999999999999999999/")
    assert missing.status_code == 404
    assert _shape(missing)["code"] == "not_found"


def test_a_sending_campaign_cannot_be_edited_409(marketer: Any, cast: Cast) -> None:
    response = marketer.patch(f"/api/v1/campaigns/{cast.live.pk}/", {"name": "X"}, format="json")
    assert response.status_code == 409
    assert _shape(response)["code"] == "conflict"
    cast.live.refresh_from_db()
    assert cast.live.name != "X"


def test_the_rate_limit_answers_429_with_retry_after(
    marketer: Any, db: None, settings: Any
) -> None:
    settings.HERALD_API_RATE = "3/minute"
    codes = [marketer.get("/api/v1/lists/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = marketer.get("/api/v1/lists/")
    assert _shape(response)["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60


def test_the_rate_limit_counts_each_token_apart(api_as: Any, db: None, settings: Any) -> None:
    settings.HERALD_API_RATE = "2/minute"
    first, second = api_as("Marketer"), api_as("Administrator")
    assert [first.get("/api/v1/lists/").status_code for _ in range(3)] == [200, 200, 429]
    assert second.get("/api/v1/lists/").status_code == 200
