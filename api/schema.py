"""Schema post-processing: every operation may answer with the API's one
error shape, so a client (and Schemathesis) knows what a 4xx looks like."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "string", "description": "Machine code, e.g. invalid, not_found."},
        "message": {"type": "string", "description": "What went wrong, for people."},
        "details": {"type": "object", "description": "Per-field errors: field -> messages."},
    },
}


def error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    reference = {
        "description": "An error: bad input (400), no or a revoked token (401), not allowed "
        "(403), not found (404), a state that forbids it (409), too many requests (429, "
        "with Retry-After).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for path in result.get("paths", {}).values():
        for operation in path.values():
            operation.setdefault("responses", {}).setdefault("default", reference)
    return result
