"""Each endpoint for each role: allowed roles get the action done, the
others a 403 in the API's error shape, exactly as the admin decides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR

from .conftest import NO_ROLE, Cast

M, OP, A = MARKETER, OPERATOR, ADMINISTRATOR
ALL = (M, OP, A, NO_ROLE)

Url = Callable[[Cast], str]
Body = Callable[[Cast], dict[str, Any]]

# (name, method, url, body, status when allowed, roles allowed)
TABLE: list[tuple[str, str, Url, Body | None, int, tuple[str, ...]]] = [
    ("list contacts", "get", lambda c: "/api/v1/contacts/", None, 200, (M, A)),
    ("get contact", "get", lambda c: f"/api/v1/contacts/{c.contact.pk}/", None, 200, (M, A)),
    (
        "create contact",
        "post",
        lambda c: "/api/v1/contacts/",
        lambda c: {"email": "new@example.org"},
        201,
        (M, A),
    ),
    (
        "update contact",
        "patch",
        lambda c: f"/api/v1/contacts/{c.contact.pk}/",
        lambda c: {"first_name": "Janet"},
        200,
        (M, A),
    ),
    ("delete contact", "delete", lambda c: f"/api/v1/contacts/{c.contact.pk}/", None, 204, (M, A)),
    (
        "bulk upsert contacts",
        "post",
        lambda c: "/api/v1/contacts/bulk/",
        lambda c: {"contacts": [{"email": "bulk@example.org"}]},
        200,
        (M, A),
    ),
    (
        "subscribe contact",
        "post",
        lambda c: f"/api/v1/contacts/{c.contact.pk}/subscribe/",
        lambda c: {"lists": [c.contact_list.pk]},
        200,
        (M, A),
    ),
    (
        "unsubscribe contact",
        "post",
        lambda c: f"/api/v1/contacts/{c.contact.pk}/unsubscribe/",
        lambda c: {"lists": [c.contact_list.pk]},
        200,
        (M, A),
    ),
    ("list lists", "get", lambda c: "/api/v1/lists/", None, 200, (M, A)),
    ("create list", "post", lambda c: "/api/v1/lists/", lambda c: {"name": "VIP"}, 201, (M, A)),
    (
        "delete list",
        "delete",
        lambda c: f"/api/v1/lists/{c.contact_list.pk}/",
        None,
        204,
        (M, A),
    ),
    ("list segments", "get", lambda c: "/api/v1/segments/", None, 200, (M, A)),
    (
        "create segment",
        "post",
        lambda c: "/api/v1/segments/",
        lambda c: {"name": "Active", "statuses": ["active"]},
        201,
        (M, A),
    ),
    (
        "cancel campaign",
        "post",
        lambda c: f"/api/v1/campaigns/{c.live.pk}/cancel/",
        lambda c: {},
        200,
        (M, A),
    ),
    ("list suppressions", "get", lambda c: "/api/v1/suppressions/", None, 200, (M, A)),
    (
        "create suppression",
        "post",
        lambda c: "/api/v1/suppressions/",
        lambda c: {"pattern": "bob@example.org"},
        201,
        (M, A),
    ),
    ("list templates", "get", lambda c: "/api/v1/templates/", None, 200, (M, A)),
    (
        "update template",
        "patch",
        lambda c: f"/api/v1/templates/{c.template.pk}/",
        lambda c: {"subject": "News for {{ contact.first_name }}"},
        200,
        (M, A),
    ),
    (
        "preview template",
        "post",
        lambda c: f"/api/v1/templates/{c.template.pk}/preview/",
        lambda c: {"contact": c.contact.pk},
        200,
        (M, A),
    ),
    ("list campaigns", "get", lambda c: "/api/v1/campaigns/", None, 200, (M, OP, A)),
    (
        "create campaign",
        "post",
        lambda c: "/api/v1/campaigns/",
        lambda c: {
            "name": "Spring",
            "template": c.template.pk,
            "dispatcher": c.dispatcher.pk,
            "lists": [c.contact_list.pk],
        },
        201,
        (M, A),
    ),
    (
        "update draft campaign",
        "patch",
        lambda c: f"/api/v1/campaigns/{c.draft.pk}/",
        lambda c: {"name": "Renamed"},
        200,
        (M, A),
    ),
    (
        "schedule campaign",
        "post",
        lambda c: f"/api/v1/campaigns/{c.draft.pk}/schedule/",
        lambda c: {},
        200,
        (M, A),
    ),
    (
        "pause campaign",
        "post",
        lambda c: f"/api/v1/campaigns/{c.live.pk}/pause/",
        lambda c: {},
        200,
        (M, OP, A),
    ),
    (
        "resume campaign",
        "post",
        lambda c: f"/api/v1/campaigns/{c.paused.pk}/resume/",
        None,
        200,
        (M, OP, A),
    ),
    (
        "duplicate campaign",
        "post",
        lambda c: f"/api/v1/campaigns/{c.live.pk}/duplicate/",
        None,
        201,
        (M, A),
    ),
    (
        "campaign progress",
        "get",
        lambda c: f"/api/v1/campaigns/{c.live.pk}/progress/",
        None,
        200,
        (M, OP, A),
    ),
    (
        "campaign recipients",
        "get",
        lambda c: f"/api/v1/campaigns/{c.live.pk}/recipients/",
        None,
        200,
        (M, OP, A),
    ),
    ("list dispatchers", "get", lambda c: "/api/v1/dispatchers/", None, 200, (OP, A)),
    (
        "pause dispatcher",
        "post",
        lambda c: f"/api/v1/dispatchers/{c.dispatcher.pk}/pause/",
        lambda c: {"reason": "maintenance"},
        200,
        (OP, A),
    ),
    ("list jobs", "get", lambda c: "/api/v1/jobs/", None, 200, (OP, A)),
    ("list job runs", "get", lambda c: "/api/v1/job-runs/", None, 200, (OP, A)),
    (
        "run job now",
        "post",
        lambda c: "/api/v1/jobs/generate_items/run/",
        None,
        202,
        (OP, A),
    ),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "expected", "allowed"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_each_endpoint_answers_each_role_as_the_admin_would(
    api_as: Any,
    cast: Cast,
    method: str,
    url: Url,
    body: Body | None,
    expected: int,
    allowed: tuple[str, ...],
) -> None:
    for role in ALL:
        # Each role acts on the same rows; its changes are rolled back.
        with transaction.atomic():
            response = getattr(api_as(role), method)(
                url(cast), body(cast) if body else None, format="json"
            )
            transaction.set_rollback(True)
        if role in allowed:
            assert response.status_code == expected, (role, response.content)
        else:
            assert response.status_code == 403, (role, response.content)
            assert response.json()["code"] == "permission_denied"


def test_resuming_a_dispatcher_needs_the_pause_permission(api_as: Any, cast: Cast) -> None:
    cast.dispatcher.is_enabled = False
    cast.dispatcher.save()
    url = f"/api/v1/dispatchers/{cast.dispatcher.pk}/resume/"
    assert api_as(MARKETER).post(url).status_code == 403
    assert api_as(OPERATOR).post(url).status_code == 200
    cast.dispatcher.refresh_from_db()
    assert cast.dispatcher.is_enabled


def test_nobody_deletes_a_campaign_through_the_api(administrator: Any, cast: Cast) -> None:
    response = administrator.delete(f"/api/v1/campaigns/{cast.draft.pk}/")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
