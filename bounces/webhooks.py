"""Email service providers' tracking webhooks, through django-anymail.

Every request must carry the shared secret (HTTP basic auth, anymail's
WEBHOOK_SECRET, from HERALD_WEBHOOK_SECRET) and, where the provider signs
its webhooks, a valid and fresh signature (Mailgun: HMAC-SHA256 with the
webhook signing key, a timestamp no older than HERALD_WEBHOOK_MAX_AGE).
Anything else is refused with 400 and changes nothing. Without a
configured secret the endpoints refuse everything: an unprotected
endpoint could suppress any address.

Accepted events go through anymail's ``tracking`` signal to
services.esp_event_record (connected in apps.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.webhooks.mailgun import MailgunTrackingWebhookView
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from django.conf import settings
from django.http import HttpRequest

# A signed request may arrive a little early by the clocks.
CLOCK_SKEW = 300


class SecretRequired:
    """Basic auth always, with the secret read from settings per request."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("webhook_secret", settings.HERALD_WEBHOOK_SECRET or [])
        super().__init__(**kwargs)  # type: ignore[call-arg]

    def validate_request(self, request: HttpRequest) -> None:
        # anymail accepts any request when no secret is set (with a warning).
        if not self.basic_auth:  # type: ignore[attr-defined]
            raise AnymailWebhookValidationFailure(
                "HERALD_WEBHOOK_SECRET is not set: provider webhooks are refused."
            )


class MailgunTracking(SecretRequired, MailgunTrackingWebhookView):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("webhook_signing_key", settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY)
        super().__init__(**kwargs)

    def validate_request(self, request: HttpRequest) -> None:
        # anymail checks the HMAC; the timestamp it covers must be fresh, so
        # a captured request cannot be replayed days later.
        if not self.webhook_signing_key:
            raise AnymailWebhookValidationFailure(
                "HERALD_MAILGUN_WEBHOOK_SIGNING_KEY is not set: Mailgun webhooks are refused."
            )
        try:
            if request.content_type == "application/json":
                stamp = json.loads(request.body)["signature"]["timestamp"]
            else:
                stamp = request.POST["timestamp"]
            age = time.time() - float(stamp)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnymailWebhookValidationFailure("Mailgun webhook without a timestamp") from exc
        if age > settings.HERALD_WEBHOOK_MAX_AGE or age < -CLOCK_SKEW:
            raise AnymailWebhookValidationFailure("Mailgun webhook signature is stale")


class PostmarkTracking(SecretRequired, PostmarkTrackingWebhookView):
    """Postmark does not sign its webhooks: the shared secret is all."""
