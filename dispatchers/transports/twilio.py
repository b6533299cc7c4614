"""SMS through Twilio's Messages API, with the twilio library's Client.

One client (one pooled HTTPS session) per batch. Like every transport it
knows nothing of campaigns: it is handed a number, a text and the URL
Twilio should report the message's fate to, and answers with a
SendResult whose queue_id is Twilio's message SID.

Twilio's answers, mapped:
- 201 with a sid and status "queued" (or "accepted" for a messaging
  service): accepted.
- 429 (too many requests) and 5xx: transient, tried again later.
- 401 (error 20003, the account SID or auth token is wrong) and errors
  of the sender itself (21212 invalid From, 21659 From not a Twilio
  number): every message would fail the same way, so the batch stops
  and goes back untouched (ConnectionLost, retry pointless).
- any other 4xx (e.g. 21211 invalid 'To' number, 21610 the recipient
  replied STOP): permanent for that recipient.
- no answer: the connection is lost; the message may have been created
  when the request was sent and only the answer went missing.
"""

from __future__ import annotations

import logging

import requests
import urllib3
from django.conf import settings
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from .base import ConnectionLost, Outcome, SendResult

TWILIO_API_URL = "https://api.twilio.com"
TIMEOUT_SECONDS = 30
# Twilio's error codes that concern the sender, not the recipient.
SENDER_ERRORS = frozenset({21212, 21659})

# The library logs every request and response at INFO; a campaign would
# drown the log. Its warnings still show.
_quiet = logging.getLogger("dispatchers.transports.twilio.http")
_quiet.setLevel(logging.WARNING)


class TwilioTransport:
    timeout = TIMEOUT_SECONDS

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str = "",
        messaging_service_sid: str = "",
    ) -> None:
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self._client: Client | None = None

    def open(self) -> None:
        if not (self.account_sid and self._auth_token):
            raise ConnectionLost(
                "The dispatcher has no Twilio account SID or auth token.", retry_pointless=True
            )
        http = TwilioHttpClient(timeout=self.timeout, logger=_quiet)
        # environment={} would fall back to os.environ inside the library;
        # every setting it reads from there is given explicitly instead.
        client = Client(self.account_sid, self._auth_token, http_client=http)
        client.edge = client.region = None
        # Overridable so tests (and a proxy) can stand in for api.twilio.com.
        client.api.base_url = settings.HERALD_TWILIO_API_URL or TWILIO_API_URL
        self._client = client

    def send(self, *, to: str, body: str, status_callback: str) -> SendResult:
        assert self._client is not None, "open() first"
        sender = (
            {"from_": self.from_number}
            if self.from_number
            else {"messaging_service_sid": self.messaging_service_sid}
        )
        try:
            message = self._client.messages.create(
                to=to, body=body, status_callback=status_callback, **sender
            )
        except TwilioException as exc:
            return _refused(exc)
        except requests.ConnectionError as exc:
            raise ConnectionLost(
                f"Twilio could not be reached: {type(exc).__name__}",
                maybe_delivered=not _never_connected(exc),
            ) from exc
        except requests.RequestException as exc:
            raise ConnectionLost(
                f"Twilio did not answer: {type(exc).__name__}", maybe_delivered=True
            ) from exc
        return SendResult(
            Outcome.ACCEPTED, code=201, text=str(message.status or "queued"), queue_id=message.sid
        )

    def close(self) -> None:
        if self._client is not None:
            session = getattr(self._client.http_client, "session", None)
            if session is not None:
                session.close()
        self._client = None


def _never_connected(exc: requests.ConnectionError) -> bool:
    """A failed connect never carried the request; a reset after it might have."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _refused(exc: TwilioException) -> SendResult:
    status = int(getattr(exc, "status", 0) or 0)
    code = getattr(exc, "code", None)
    message = str(getattr(exc, "msg", "") or getattr(exc, "detail", "") or "")
    message = message.removeprefix("Unable to create record: ")
    text = f"Twilio error {code}: {message}" if code else f"Twilio HTTP {status}: {message}"
    if status == 401 or code in SENDER_ERRORS:
        raise ConnectionLost(text, retry_pointless=True) from exc
    if status == 429 or status >= 500:
        return SendResult(Outcome.TRANSIENT, code=status, text=text)
    return SendResult(Outcome.PERMANENT, code=status or None, text=text)
