"""Twilio's Messages API, faked at the HTTP level.

api.twilio.com lies beyond the network edge, so tests point
HERALD_TWILIO_API_URL at this local server. It answers the request the
twilio library really makes (POST /2010-04-01/Accounts/<sid>/Messages.json,
HTTP basic auth with the account SID and auth token, form-encoded To,
From or MessagingServiceSid, Body, StatusCallback) with Twilio's real
response shapes: 201 and the message resource with status "queued"; 401
error 20003 for wrong credentials; 400 error 21211 for a To number
Twilio calls invalid; and whatever a test queues (429, 500...).

``twilio_signature`` signs a status callback exactly as Twilio does
(X-Twilio-Signature: HMAC-SHA1 over the URL and the sorted parameters,
keyed with the auth token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f" * 8 + "0123456789abcdef" + "e" * 8
FROM_NUMBER = "+14155550199"
# Twilio's own magic test number for "invalid To" (error 21211).
INVALID_TO = "+15005550001"


def error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class FakeTwilio:
    """What the server was asked, and how it answers next."""

    url: str = ""
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    messages: list[dict[str, str]] = field(default_factory=list)
    # (status, body) answers used before the normal ones, one per request.
    queued_answers: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    refused_auth: int = 0
    # Seconds to wait before the next answer (the message is created first,
    # as when Twilio took it and only its answer went missing).
    delay_next: float = 0.0
    _serial: itertools.count = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, authorization: str, form: dict[str, str]) -> tuple[int, dict]:
        with self.lock:
            expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
            if authorization != f"Basic {expected}":
                self.refused_auth += 1
                return 401, error_body(401, 20003, "Authenticate")
            if path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
                return 404, error_body(404, 20404, "The requested resource was not found")
            if self.queued_answers:
                return self.queued_answers.popleft()
            to = form.get("To", "")
            if to == INVALID_TO:
                return 400, error_body(
                    400, 21211, f"The 'To' number {to} is not a valid phone number."
                )
            sid = f"SM{next(self._serial):032x}"
            self.messages.append({**form, "Sid": sid})
            return 201, self._resource(sid, form)

    def _resource(self, sid: str, form: dict[str, str]) -> dict[str, Any]:
        now = formatdate(usegmt=False).replace("-0000", "+0000")
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if "MessagingServiceSid" in form else "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": form.get("To"),
            "uri": f"{base}.json",
        }


class TwilioServer:
    """``with TwilioServer() as twilio:`` runs the fake on a free port."""

    def __init__(self) -> None:
        self.state = FakeTwilio()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                status, body = state.answer(self.path, self.headers.get("Authorization", ""), form)
                delay, state.delay_next = state.delay_next, 0.0
                time.sleep(delay)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        state.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeTwilio:
        self._thread.start()
        return self.state

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def callback_params(sid: str, status: str, *, to: str = "", error_code: str = "") -> dict[str, str]:
    """The form Twilio POSTs to a StatusCallback URL."""
    params = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": FROM_NUMBER,
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": to,
    }
    if error_code:
        params["ErrorCode"] = error_code
    return params


def twilio_signature(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature as Twilio's security docs define it, written out
    here rather than taken from the library Herald checks it with: the
    full URL, then each parameter name and value sorted by name, HMAC-SHA1
    keyed with the auth token, base64."""
    signed = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
