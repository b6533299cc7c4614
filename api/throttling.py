from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class TokenRateThrottle(SimpleRateThrottle):
    """HERALD_API_RATE requests per token; a user's tokens count apart, so
    one runaway script does not lock out the others."""

    scope = "api_token"

    def get_rate(self) -> str:
        return settings.HERALD_API_RATE

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if request.auth is None:
            return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
        return self.cache_format % {"scope": self.scope, "ident": f"token-{request.auth.pk}"}
