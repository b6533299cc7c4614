"""Postmark's API, faked at HTTP level on a loopback port.

It answers POST /email and GET /server as api.postmarkapp.com does, with
its real response shapes: the server token in X-Postmark-Server-Token
(401 and ErrorCode 10 when wrong), 200 with a MessageID, 422 with
ErrorCode 406 for an inactive (suppressed) recipient, and whatever the
test scripts for an address (a 500, say). It records every request.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "pm-server-token-4a1f"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakePostmark:
    inactive: set[str] = field(default_factory=set)
    # address -> (status, body) answered instead of accepting
    scripted: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: dict
    ) -> tuple[int, str]:
        with self.lock:
            self.requests.append(Recorded(method, path, headers, body))
        if headers.get("x-postmark-server-token") != TOKEN:
            return 401, json.dumps(
                {
                    "ErrorCode": 10,
                    "Message": "The Server Token you provided in the "
                    "X-Postmark-Server-Token request header was invalid.",
                }
            )
        if method == "GET" and path == "/server":
            return 200, json.dumps({"ID": 1, "Name": "Herald", "ApiTokens": [TOKEN]})
        if method != "POST" or path != "/email":
            return 404, json.dumps({"ErrorCode": 404, "Message": "Not found"})
        to = body.get("To", "")
        address = to.rpartition("<")[2].rstrip(">").lower()
        if address in self.scripted:
            return self.scripted[address]
        if address in self.inactive:
            return 422, json.dumps(
                {
                    "ErrorCode": 406,
                    "Message": "You tried to send to recipient(s) that have been marked as "
                    f"inactive. Found inactive addresses: {address}. Inactive recipients "
                    "are ones that have generated a hard bounce, a spam complaint, or a "
                    "manual suppression.",
                }
            )
        return 200, json.dumps(
            {
                "To": to,
                "SubmittedAt": "2026-11-26T01:00:00.0000000-05:00",
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            }
        )


class PostmarkServer:
    def __init__(self) -> None:
        self.fake = FakePostmark()
        fake = self.fake

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, text = fake.answer(self.command, self.path, headers, body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> PostmarkServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
