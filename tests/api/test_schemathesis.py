"""Schemathesis against the served schema, as an administrator (who may
call everything): no 500s, and every response matches the schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from api.services import token_create

from .conftest import Cast

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def served_schema(cast: Cast, settings: Any) -> Iterator[Any]:
    settings.HERALD_API_RATE = "100000/minute"
    # In-process WSGI calls share the test's transaction; Django would
    # close that connection at the end of each request (as its test client
    # also prevents).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def admin_token(db: None) -> str:
    user = user_create(username="ada", email="ada@herald.test", password="pw", role=ADMINISTRATOR)
    return token_create(user=user, name="schemathesis")[1]


def test_the_api_answers_generated_requests_as_its_schema_says(
    served_schema: Any, admin_token: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_token}"}
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) > 40

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
        def answers(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        answers()
