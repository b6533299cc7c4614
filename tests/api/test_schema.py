"""The OpenAPI schema and its docs page are served, the page with its own
assets (no CDN)."""

from __future__ import annotations

from django.test import Client


def test_the_schema_describes_every_endpoint(db: None) -> None:
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/contacts/bulk/", "/api/v1/campaigns/{id}/schedule/", "/api/v1/jobs/"):
        assert path in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_docs_page_loads_swagger_ui_from_herald_itself(db: None) -> None:
    page = Client().get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower()
