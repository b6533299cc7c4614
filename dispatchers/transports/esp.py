"""Email service API: SendGrid, Mailgun, Amazon SES, Postmark... via django-anymail.

The message Herald built is read back from its wire bytes with the
stdlib parser and handed to the provider's anymail backend as an
AnymailMessage: the same subject, addresses, bodies, attachments and
headers (List-Unsubscribe, Message-ID, Feedback-ID...). The backend is
configured per dispatcher through its keyword settings, never through
Django's global ANYMAIL settings, so every dispatcher has its own key.

What the provider answers becomes a SendResult: accepted, a refused
recipient or a refused message (permanent), a busy or failing service
(transient); a key the provider refuses stops the dispatcher, since no
retry can help until an administrator fixes it.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import botocore.exceptions
import requests
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailRecipientsRefused
from anymail.message import AnymailMessage
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import get_connection

from smtpservers.encryption import reveal

from .base import ConnectionLost, Outcome, SendResult, Transport, message_bytes

if TYPE_CHECKING:
    from dispatchers.models import Dispatcher

# Headers anymail sets from the message's own fields, and a DKIM signature
# that cannot survive the provider rebuilding the message (it signs itself).
_STRUCTURAL = {
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "dkim-signature",
    "return-path",
}
_SES_REGION = re.compile(r"^email(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")
ACCEPTED_STATUSES = {"sent", "queued", "scheduled", "unknown"}


def backend_options(dispatcher: Dispatcher) -> tuple[str, dict[str, Any]]:
    """The anymail backend and its keyword settings for this dispatcher."""
    from dispatchers.providers import PROVIDERS

    provider = PROVIDERS[dispatcher.esp_provider]
    key = reveal(dispatcher.esp_api_key)
    url = dispatcher.esp_api_url
    if dispatcher.esp_provider == "amazon_ses":
        key_id, _, secret = key.partition(":")
        session: dict[str, str] = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        client: dict[str, str] = {}
        if url:
            client["endpoint_url"] = url
            match = _SES_REGION.match(urlsplit(url).hostname or "")
            if match:
                session["region_name"] = match[1]
        return provider.backend, {"session_params": session, "client_params": client}
    if provider.key_pair:  # Mailjet: API key and secret key
        first, _, second = key.partition(":")
        options: dict[str, Any] = {"api_key": first, "secret_key": second}
    else:
        options = {provider.key_setting: key}
    if url:
        options["api_url"] = url
    return provider.backend, options


def anymail_message(message: EmailMessage, *, recipient: str) -> AnymailMessage:
    """The built message, read back from its wire bytes, as anymail sends it."""
    # The wire form has CRLF line ends; the provider wants the text as text.
    data = message_bytes(message).replace(b"\r\n", b"\n")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    to = str(parsed.get("To") or "")
    out = AnymailMessage(
        subject=str(parsed.get("Subject") or ""),
        from_email=str(parsed.get("From") or ""),
        # The To header keeps the display name when it is this recipient's.
        to=[to if to and recipient.lower() in to.lower() else recipient],
        reply_to=[str(parsed["Reply-To"])] if parsed.get("Reply-To") else [],
        headers={
            name: str(value) for name, value in parsed.items() if name.lower() not in _STRUCTURAL
        },
    )
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    out.body = plain.get_content() if plain is not None else ""  # type: ignore[attr-defined]
    if html is not None:
        out.attach_alternative(html.get_content(), "text/html")  # type: ignore[attr-defined]
    for part in parsed.iter_attachments():
        out.attach(part.get_filename(), part.get_content(), part.get_content_type())  # type: ignore[attr-defined]
    return out


def _status_code(exc: AnymailError) -> int | None:
    if exc.status_code is not None:
        return int(exc.status_code)
    # boto (Amazon SES) errors carry the HTTP status in their parsed response.
    response = getattr(exc.__cause__, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if code else None
    return None


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:450]


def result_from_error(exc: AnymailAPIError, *, provider: str) -> SendResult:
    """An API error as a verdict on the message; raises ConnectionLost when
    the service itself cannot be used (unreachable, key refused)."""
    code = _status_code(exc)
    text = f"{provider}: {_detail(exc)}"
    if code is None:
        cause = exc.__cause__
        if isinstance(cause, requests.ConnectionError) and not isinstance(
            cause, requests.ReadTimeout
        ):
            raise ConnectionLost(f"{provider} API unreachable: {_detail(cause)}") from exc
        # A timeout or an unreadable answer: the provider may have taken it.
        raise ConnectionLost(text, maybe_delivered=True) from exc
    if code in (401, 403):
        raise ConnectionLost(
            f"{provider} refused the API key ({code}); check it in the dispatcher.",
            retry_pointless=True,
        ) from exc
    if code in (408, 409, 425, 429) or code >= 500:
        return SendResult(Outcome.TRANSIENT, code, text)
    return SendResult(Outcome.PERMANENT, code, text)


class ApiTransport(Transport):
    def __init__(self, *, backend: str, options: dict[str, Any], provider: str) -> None:
        self.backend = backend
        self.options = options
        self.provider = provider
        self._connection: Any = None

    @classmethod
    def for_dispatcher(cls, dispatcher: Dispatcher) -> ApiTransport:
        backend, options = backend_options(dispatcher)
        return cls(backend=backend, options=options, provider=dispatcher.get_esp_provider_display())

    def open(self) -> None:
        try:
            self._connection = get_connection(self.backend, **self.options)
            self._connection.open()
        except (ImproperlyConfigured, AnymailError, botocore.exceptions.BotoCoreError) as exc:
            raise ConnectionLost(
                f"{self.provider} is not set up: {_detail(exc)}", retry_pointless=True
            ) from exc

    def send(self, message: EmailMessage, *, sender: str, recipient: str) -> SendResult:
        assert self._connection is not None, "open() first"
        outgoing = anymail_message(message, recipient=recipient)
        outgoing.connection = self._connection
        try:
            outgoing.send()
        except AnymailRecipientsRefused as exc:
            return SendResult(
                Outcome.PERMANENT, None, f"{self.provider} refused the recipient: {_detail(exc)}"
            )
        except AnymailAPIError as exc:
            return result_from_error(exc, provider=self.provider)
        status = outgoing.anymail_status
        mine = status.recipients.get(recipient) or next(iter(status.recipients.values()), None)
        verdict = mine.status if mine is not None else "unknown"
        message_id = str((mine.message_id if mine is not None else None) or "")
        if verdict in ACCEPTED_STATUSES:
            return SendResult(
                Outcome.ACCEPTED, None, f"{self.provider}: {verdict}", queue_id=message_id
            )
        if verdict == "failed":
            return SendResult(Outcome.TRANSIENT, None, f"{self.provider}: failed")
        return SendResult(Outcome.PERMANENT, None, f"{self.provider}: {verdict}")

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - closing must never fail a batch
                pass
        self._connection = None


# --- "Test connection": does the key work? ------------------------------------


def _get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(
        url,
        timeout=10,
        headers={"Accept": "application/json", **kwargs.pop("headers", {})},
        **kwargs,
    )


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path


def _key_checks(dispatcher: Dispatcher) -> requests.Response | None:
    """A read-only call that needs a valid key, where the provider has one."""
    from dispatchers.providers import PROVIDERS

    code = dispatcher.esp_provider
    key = reveal(dispatcher.esp_api_key)
    base = dispatcher.esp_api_url or PROVIDERS[code].default_url
    if code == "postmark":
        return _get(_join(base, "server"), headers={"X-Postmark-Server-Token": key})
    if code == "sendgrid":
        return _get(_join(base, "scopes"), headers={"Authorization": f"Bearer {key}"})
    if code == "mailgun":
        return _get(_join(base, f"domains/{dispatcher.from_domain}"), auth=("api", key))
    if code == "sparkpost":
        return _get(_join(base, "account"), headers={"Authorization": key})
    if code == "brevo":
        return _get(_join(base, "account"), headers={"api-key": key})
    if code == "resend":
        return _get(_join(base, "domains"), headers={"Authorization": f"Bearer {key}"})
    return None


def api_key_check(dispatcher: Dispatcher) -> tuple[bool | None, str]:
    """(True, ...) the key works, (False, why) it does not, (None, why)
    the provider offers no harmless way to find out."""
    provider = dispatcher.get_esp_provider_display()
    if dispatcher.esp_provider == "amazon_ses":
        return _ses_check(dispatcher)
    try:
        response = _key_checks(dispatcher)
    except requests.RequestException as exc:
        return False, f"{provider} API unreachable: {_detail(exc)}"
    if response is None:
        return None, (
            f"{provider} offers no way to check a key without sending; send a test "
            "campaign to find out."
        )
    if response.status_code in (401, 403):
        return False, f"{provider} refused the API key ({response.status_code})."
    if response.status_code == 404 and dispatcher.esp_provider == "mailgun":
        return False, f"Mailgun does not know the sending domain {dispatcher.from_domain}."
    if not response.ok:
        return False, f"{provider} answered {response.status_code}: {response.text[:200]}"
    return True, f"{provider} accepted the API key."


def _ses_check(dispatcher: Dispatcher) -> tuple[bool | None, str]:
    import boto3

    _, options = backend_options(dispatcher)
    try:
        session = boto3.session.Session(**options["session_params"])
        client = session.client("sesv2", **options["client_params"])
        account = client.get_account()
    except botocore.exceptions.ClientError as exc:
        return False, f"Amazon SES refused: {_detail(exc)}"
    except botocore.exceptions.BotoCoreError as exc:
        return False, f"Amazon SES could not be reached: {_detail(exc)}"
    sending = "enabled" if account.get("SendingEnabled") else "disabled"
    return True, f"Amazon SES accepted the keys; sending is {sending}."
