"""Email service providers' tracking webhooks, through django-anymail.

Each API dispatcher has its own URL, /webhooks/<provider>/<dispatcher id>/,
shown on its page. Every request must carry the shared secret (HTTP basic
auth, anymail's WEBHOOK_SECRET, from HERALD_WEBHOOK_SECRET) and, where the
provider signs its webhooks, a valid signature made with the key stored
(encrypted) on the dispatcher, over a timestamp no older than
HERALD_WEBHOOK_MAX_AGE where the signature covers one:

    provider      signature (checked by)                  signed timestamp
    Mailgun       HMAC-SHA256, signing key (anymail)      signature.timestamp
    SendGrid      ECDSA, verification key (anymail)       X-Twilio-...-Timestamp
    Amazon SES    SNS RSA certificate (bounces/sns.py),   SNS Timestamp
                  and only the dispatcher's topic
    Mandrill      HMAC-SHA1 of URL+params (anymail)       each event's ts
    MailerSend    HMAC-SHA256, signing secret (anymail)   data.created_at
    Mailtrap      HMAC-SHA256, signing secret (anymail)   each event's timestamp
    Postal        RSA, server public key (anymail)        timestamp
    Resend        Svix HMAC-SHA256 (here: no svix)        svix-timestamp, 5 min
    Unisender Go  MD5 with the API key (anymail)          each event_time
    Postmark, SparkPost, Brevo, Mailjet sign nothing: the shared secret is all,
    and a replay is recognised by its event id (or digest) and changes nothing.

Anything else is refused with 400 (401 for SNS without credentials, 404
for a URL of no such API dispatcher) and changes nothing. Without a
configured secret or signing key the endpoints refuse everything: an
unprotected endpoint could suppress any address.

The first two URLs, /webhooks/mailgun/tracking/ and /webhooks/postmark/
tracking/, still work, with the signing key from the environment.

Accepted events go through anymail's ``tracking`` signal to
services.esp_event_record (connected in apps.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import warnings
from datetime import UTC
from typing import Any

from anymail.exceptions import AnymailNotSupportedWarning, AnymailWebhookValidationFailure
from anymail.utils import get_request_basic_auth
from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
from anymail.webhooks.brevo import BrevoTrackingWebhookView
from anymail.webhooks.mailersend import MailerSendTrackingWebhookView
from anymail.webhooks.mailgun import MailgunTrackingWebhookView
from anymail.webhooks.mailjet import MailjetTrackingWebhookView
from anymail.webhooks.mailtrap import MailtrapTrackingWebhookView
from anymail.webhooks.mandrill import MandrillCombinedWebhookView
from anymail.webhooks.postal import PostalTrackingWebhookView
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from anymail.webhooks.resend import ResendTrackingWebhookView
from anymail.webhooks.sendgrid import SendGridTrackingWebhookView
from anymail.webhooks.sparkpost import SparkPostTrackingWebhookView
from anymail.webhooks.unisender_go import UnisenderGoTrackingWebhookView
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from dispatchers.models import Dispatcher
from smtpservers.encryption import reveal

from .services import receiving_dispatcher
from .sns import SnsSignatureError, sns_signature_verify, sns_subscription_confirm

# A signed request may arrive a little early by the clocks.
CLOCK_SKEW = 300
# anymail warns on every SendGrid view it builds (one per request) that it
# no longer supports SendGrid officially; its webhook still parses the events.
warnings.filterwarnings("ignore", category=AnymailNotSupportedWarning)

Refused = AnymailWebhookValidationFailure


class SecretRequired:
    """Basic auth always, with the secret read from settings per request."""

    # The anymail setting the dispatcher's signing key is handed to ("": none).
    key_kwarg = ""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("webhook_secret", settings.HERALD_WEBHOOK_SECRET or [])
        super().__init__(**kwargs)  # type: ignore[call-arg]

    def validate_request(self, request: HttpRequest) -> None:
        # anymail accepts any request when no secret is set (with a warning).
        if not self.basic_auth:  # type: ignore[attr-defined]
            raise Refused("HERALD_WEBHOOK_SECRET is not set: provider webhooks are refused.")

    @classmethod
    def dispatcher_kwargs(cls, dispatcher: Dispatcher, request: HttpRequest) -> dict[str, Any]:
        """What this dispatcher's webhook view is built with: its signing key."""
        if not cls.key_kwarg:
            return {}
        key = reveal(dispatcher.esp_webhook_key).strip()
        if not key:
            raise Refused(
                f"Dispatcher {dispatcher.pk} has no webhook signing key: its provider's "
                "webhooks are refused until one is entered on the dispatcher page."
            )
        return {cls.key_kwarg: key}


class Fresh:
    """Refuses a request whose signed timestamps are stale or from the future,
    so a captured request cannot be replayed days later."""

    max_age: int | None = None  # None: HERALD_WEBHOOK_MAX_AGE

    def signed_times(self, request: HttpRequest) -> list[float]:
        raise NotImplementedError

    def validate_request(self, request: HttpRequest) -> None:
        name = self.esp_name  # type: ignore[attr-defined]
        try:
            stamps = self.signed_times(request)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise Refused(f"{name} webhook without a timestamp") from exc
        if not stamps:
            raise Refused(f"{name} webhook without a timestamp")
        max_age = self.max_age or settings.HERALD_WEBHOOK_MAX_AGE
        now = time.time()
        if any(now - stamp > max_age or stamp - now > CLOCK_SKEW for stamp in stamps):
            raise Refused(f"{name} webhook is stale")


def _json(request: HttpRequest) -> Any:
    return json.loads(request.body)


def _iso(value: str) -> float:
    parsed = parse_datetime(value.replace(" ", "T"))
    if parsed is None:
        raise ValueError(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class MailgunTracking(SecretRequired, Fresh, MailgunTrackingWebhookView):
    key_kwarg = "webhook_signing_key"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("webhook_signing_key", settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY)
        super().__init__(**kwargs)

    @classmethod
    def dispatcher_kwargs(cls, dispatcher: Dispatcher, request: HttpRequest) -> dict[str, Any]:
        # The key from the environment, as before per-dispatcher keys, still serves.
        if not dispatcher.esp_webhook_key and settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY:
            return {}
        return super().dispatcher_kwargs(dispatcher, request)

    def validate_request(self, request: HttpRequest) -> None:
        if not self.webhook_signing_key:
            raise Refused("No Mailgun webhook signing key is set: Mailgun webhooks are refused.")

    def signed_times(self, request: HttpRequest) -> list[float]:
        if request.content_type == "application/json":
            return [float(_json(request)["signature"]["timestamp"])]
        return [float(request.POST["timestamp"])]


class PostmarkTracking(SecretRequired, PostmarkTrackingWebhookView):
    """Postmark does not sign its webhooks: the shared secret is all."""


class SparkPostTracking(SecretRequired, SparkPostTrackingWebhookView):
    """SparkPost signs nothing; its webhook sends the basic auth we give it."""


class BrevoTracking(SecretRequired, BrevoTrackingWebhookView):
    """Brevo signs nothing: the shared secret is all."""


class MailjetTracking(SecretRequired, MailjetTrackingWebhookView):
    """Mailjet signs nothing: the shared secret is all."""


class SendGridTracking(SecretRequired, Fresh, SendGridTrackingWebhookView):
    key_kwarg = "tracking_webhook_verification_key"

    def validate_request(self, request: HttpRequest) -> None:
        # anymail skips the signature check without a key; Herald refuses.
        if self.webhook_verification_key is None:
            raise Refused("No SendGrid verification key is set: SendGrid webhooks are refused.")

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [float(request.headers["X-Twilio-Email-Event-Webhook-Timestamp"])]


class MandrillTracking(SecretRequired, Fresh, MandrillCombinedWebhookView):
    key_kwarg = "webhook_key"

    @classmethod
    def dispatcher_kwargs(cls, dispatcher: Dispatcher, request: HttpRequest) -> dict[str, Any]:
        # Mandrill signs the URL it posts to, credentials included: the one on
        # the dispatcher page, whatever proxy sits in front of Herald.
        scheme, _, host = settings.HERALD_PUBLIC_URL.partition("://")
        credentials = get_request_basic_auth(request) or ""
        url = f"{scheme}://{credentials}@{host}{request.path}"
        return super().dispatcher_kwargs(dispatcher, request) | {"webhook_url": url}

    def run_validators(self, request: HttpRequest) -> None:
        try:
            super().run_validators(request)  # type: ignore[misc]
        except Refused as exc:
            # anymail's message quotes the signed URL, shared secret included,
            # and Django logs it: keep the reason, drop the URL.
            raise Refused(str(exc).split(" (for url")[0]) from None

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [float(event["ts"]) for event in json.loads(request.POST["mandrill_events"])]


class MailerSendTracking(SecretRequired, Fresh, MailerSendTrackingWebhookView):
    key_kwarg = "signing_secret"

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [_iso(_json(request)["data"]["created_at"])]


class MailtrapTracking(SecretRequired, Fresh, MailtrapTrackingWebhookView):
    key_kwarg = "tracking_secret"

    def validate_request(self, request: HttpRequest) -> None:
        # anymail skips the signature check without a secret; Herald refuses.
        if self.signing_secret is None:
            raise Refused("No Mailtrap signing secret is set: Mailtrap webhooks are refused.")

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [float(event["timestamp"]) for event in _json(request)["events"]]


class PostalTracking(SecretRequired, Fresh, PostalTrackingWebhookView):
    key_kwarg = "webhook_key"

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [float(_json(request)["timestamp"])]


class UnisenderGoTracking(SecretRequired, Fresh, UnisenderGoTrackingWebhookView):
    """Unisender Go signs with the account's API key, the dispatcher's own."""

    @classmethod
    def dispatcher_kwargs(cls, dispatcher: Dispatcher, request: HttpRequest) -> dict[str, Any]:
        return {"api_key": reveal(dispatcher.esp_api_key)}

    def signed_times(self, request: HttpRequest) -> list[float]:
        parsed = self.parse_json_body(request)
        if "events_by_user" not in parsed:
            return [_iso(parsed["event_time"])]
        events = parsed["events_by_user"][0]["events"]
        return [_iso(event["event_data"]["event_time"]) for event in events]


class ResendTracking(SecretRequired, Fresh, ResendTrackingWebhookView):
    """Resend signs through Svix: HMAC-SHA256 of "id.timestamp.body" with the
    base64 secret after "whsec_". Checked here rather than with the svix
    package anymail would import. Svix signs every retry anew, so the
    timestamp gets Svix's own five minutes."""

    key_kwarg = "svix_secret"
    svix_secret = ""
    max_age = 300

    def validate_request(self, request: HttpRequest) -> None:
        try:
            secret = base64.b64decode(self.svix_secret.removeprefix("whsec_"), validate=True)
            signed = f"{request.headers['svix-id']}.{request.headers['svix-timestamp']}."
            offered = request.headers["svix-signature"].split()
        except (KeyError, binascii.Error) as exc:
            raise Refused("Resend webhook without a Svix signature") from exc
        digest = hmac.new(secret, signed.encode() + request.body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        if not any(constant_time_compare(expected, candidate) for candidate in offered):
            raise Refused("Resend webhook called with incorrect signature")

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [float(request.headers["svix-timestamp"])]


class AmazonSesTracking(SecretRequired, Fresh, AmazonSESTrackingWebhookView):
    """Amazon SES through SNS. anymail checks only that headers and body
    agree; Herald checks Amazon's signature and that the topic is the one
    configured on the dispatcher (anyone can point their own, validly
    signed, topic at this URL), and confirms the subscription by visiting
    its signed SubscribeURL, which needs no AWS credentials."""

    topic_arn = ""

    @classmethod
    def dispatcher_kwargs(cls, dispatcher: Dispatcher, request: HttpRequest) -> dict[str, Any]:
        if not dispatcher.esp_sns_topic_arn:
            raise Refused(
                f"Dispatcher {dispatcher.pk} has no SNS topic ARN: Amazon SES notifications "
                "are refused until one is entered on the dispatcher page."
            )
        return {"topic_arn": dispatcher.esp_sns_topic_arn}

    def validate_request(self, request: HttpRequest) -> None:
        message = self._parse_sns_message(request)
        if not constant_time_compare(message.get("TopicArn", ""), self.topic_arn):
            raise Refused("SNS message from a topic this dispatcher does not read")
        try:
            sns_signature_verify(message)
        except SnsSignatureError as exc:
            raise Refused(f"SNS message refused: {exc}") from exc

    def signed_times(self, request: HttpRequest) -> list[float]:
        return [_iso(self._parse_sns_message(request)["Timestamp"])]

    def auto_confirm_sns_subscription(self, sns_message: dict[str, Any]) -> None:
        try:
            sns_subscription_confirm(sns_message)
        except SnsSignatureError as exc:
            raise Refused(str(exc)) from exc


TRACKING_VIEWS: dict[str, type[SecretRequired]] = {
    "sendgrid": SendGridTracking,
    "mailgun": MailgunTracking,
    "amazon_ses": AmazonSesTracking,
    "postmark": PostmarkTracking,
    "sparkpost": SparkPostTracking,
    "brevo": BrevoTracking,
    "mailjet": MailjetTracking,
    "mailersend": MailerSendTracking,
    "mandrill": MandrillTracking,
    "mailtrap": MailtrapTracking,
    "postal": PostalTracking,
    "resend": ResendTracking,
    "unisender_go": UnisenderGoTracking,
}


@csrf_exempt
def esp_tracking(request: HttpRequest, provider: str, dispatcher_id: int) -> HttpResponse:
    """One API dispatcher's tracking webhook: the provider's anymail view,
    built with that dispatcher's signing key."""
    view = TRACKING_VIEWS.get(provider)
    dispatcher = Dispatcher.objects.filter(
        pk=dispatcher_id, delivery_mode=Dispatcher.DeliveryMode.API, esp_provider=provider
    ).first()
    if view is None or dispatcher is None:
        raise Http404("No such email service dispatcher")
    kwargs = view.dispatcher_kwargs(dispatcher, request)
    receiving = receiving_dispatcher.set(dispatcher.pk)
    try:
        return view.as_view(**kwargs)(request)  # type: ignore[attr-defined,no-any-return]
    finally:
        receiving_dispatcher.reset(receiving)
