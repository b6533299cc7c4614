"""SMTP relay through aiosmtplib, behind the synchronous Transport API.

The transport owns a private event loop so one batch reuses one session
for many messages; it never shares the loop with other code. The session
is opened by smtpservers.client with every setting of the server (TLS
mode, CA bundle, AUTH PLAIN/LOGIN, NTLM, XOAUTH2), the same code path as
"Test connection", and what it learns is kept as the server's status.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import aiosmtplib

from smtpservers.client import SessionError, session_open
from smtpservers.services import connection_status_record_from_send

from .base import ConnectionLost, Message, Outcome, SendResult, Transport, message_bytes

if TYPE_CHECKING:
    from smtpservers.models import SmtpServer

_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9.\-_]+)", re.I)
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def result_from_reply(code: int, text: str) -> SendResult:
    enhanced = (_ENHANCED.search(text) or [None, ""])[1]
    if 200 <= code < 300:
        queue_id = (_QUEUE_ID.search(text) or [None, ""])[1]
        return SendResult(Outcome.ACCEPTED, code, text, queue_id=queue_id, enhanced=enhanced)
    outcome = Outcome.TRANSIENT if 400 <= code < 500 else Outcome.PERMANENT
    return SendResult(outcome, code, text, enhanced=enhanced)


class SmtpTransport(Transport):
    def __init__(self, *, server: SmtpServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiosmtplib.SMTP | None = None

    def _run(self, coro):  # type: ignore[no-untyped-def]
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def open(self) -> None:
        server = self.server
        if not server.is_active:
            raise ConnectionLost(
                f"The SMTP server “{server.name}” is inactive; activate it to send through it.",
                retry_pointless=True,
            )
        self._loop = asyncio.new_event_loop()
        try:
            session = self._run(session_open(server))
        except SessionError as exc:
            self.close()
            connection_status_record_from_send(
                server=server, ok=False, message=f"Sending failed at {exc.step}: {exc}"
            )
            raise ConnectionLost(str(exc), retry_pointless=exc.auth_rejected) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            self.close()
            raise ConnectionLost(_describe(exc)) from exc
        self._client = session.client
        connection_status_record_from_send(
            server=server, ok=True, message=f"OK (last real send). Banner: {session.banner}"
        )

    def send(self, message: Message, *, sender: str, recipient: str) -> SendResult:
        assert self._client is not None, "open() first"
        data = message_bytes(message)
        try:
            errors, reply = self._run(self._client.sendmail(sender, [recipient], data))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            if refused.code == 421:
                raise ConnectionLost(_describe(refused)) from exc
            return result_from_reply(refused.code, refused.message)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise ConnectionLost(_describe(exc)) from exc
            return result_from_reply(exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise ConnectionLost(_describe(exc), maybe_delivered=True) from exc
        return result_from_reply(250, reply)

    def close(self) -> None:
        if self._client is not None and self._loop is not None:
            try:
                if self._client.is_connected:
                    self._run(self._client.quit())
            except Exception:  # noqa: BLE001 - closing must never fail a batch
                self._client.close()
        if self._loop is not None:
            self._loop.close()
        self._client = None
        self._loop = None


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", "") or str(exc) or type(exc).__name__
    return f"{code} {text}" if code else text
