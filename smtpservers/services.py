"""SMTP server services: test the connection, record its status, duplicate."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connection, connections, router, transaction
from django.db.models import ProtectedError, Q
from django.db.models.deletion import Collector
from django.utils import timezone

from .client import SessionError, session_open, session_quit
from .models import SmtpServer

logger = logging.getLogger(__name__)

# A real send re-records an unchanged status at most this often, so a busy
# dispatcher does not write the server row for every connection it opens.
STATUS_REFRESH = timedelta(minutes=1)


@dataclass(frozen=True)
class ConnectionReport:
    ok: bool
    message: str


def connection_test(*, server: SmtpServer) -> ConnectionReport:
    """POP-before-SMTP, connect, TLS, EHLO, AUTH and QUIT as configured;
    record the outcome."""
    report = asyncio.run(_connection_test(server))
    connection_status_record(server=server, ok=report.ok, message=report.message)
    return report


async def _connection_test(server: SmtpServer) -> ConnectionReport:
    try:
        session = await session_open(server)
        await session_quit(session.client, server)
    except SessionError as exc:
        return ConnectionReport(False, f"Failed at {exc.step}: {exc}")
    tls = {"ssl": ", implicit TLS", "starttls": ", STARTTLS"}.get(server.security, "")
    pop = ", POP-before-SMTP login OK" if server.pop_before_smtp else ""
    auth = f", logged in with AUTH {session.auth_mechanism}" if session.auth_mechanism else ""
    extensions = " ".join(e.upper() for e in session.extensions) or "none"
    return ConnectionReport(
        True, f"OK{tls}{pop}{auth}. Banner: {session.banner}. Extensions: {extensions}."
    )


def connection_status_record(*, server: SmtpServer, ok: bool, message: str) -> None:
    now = timezone.now()
    SmtpServer.objects.filter(pk=server.pk).update(
        connection_ok=ok, connection_status=message[:2000], connection_checked_at=now
    )
    server.connection_ok, server.connection_status = ok, message[:2000]
    server.connection_checked_at = now


def connection_status_record_from_send(*, server: SmtpServer, ok: bool, message: str) -> None:
    """What a real send learned about the server, written in its own thread and
    connection: senders run in pool threads, and the status must be kept even
    if the caller's transaction rolls back."""
    fresh = server.connection_checked_at and timezone.now() - server.connection_checked_at < (
        STATUS_REFRESH
    )
    if server.connection_ok is ok and server.connection_status == message and fresh:
        return

    def write() -> None:
        stale = Q(connection_checked_at__isnull=True) | ~Q(connection_ok=ok)
        stale |= Q(connection_checked_at__lt=timezone.now() - STATUS_REFRESH)
        stale |= ~Q(connection_status=message[:2000])
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    # Best effort: never wait on a row someone holds locked.
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL lock_timeout = '2s'")
                SmtpServer.objects.filter(stale, pk=server.pk).update(
                    connection_ok=ok,
                    connection_status=message[:2000],
                    connection_checked_at=timezone.now(),
                )
        except DatabaseError:
            logger.warning("could not record the status of SMTP server %s", server.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=write, name="herald-smtp-status")
    thread.start()
    thread.join()
    server.connection_ok, server.connection_status = ok, message[:2000]
    server.connection_checked_at = timezone.now()


def server_duplicate(*, server: SmtpServer) -> SmtpServer:
    """A copy named "Copy of <name>", secrets included, inactive until reviewed."""
    copy = SmtpServer.objects.get(pk=server.pk)
    copy.pk = copy.id = None
    copy.name = _copy_name(server.name)
    copy.is_active = False
    copy.connection_ok, copy.connection_status, copy.connection_checked_at = None, "", None
    copy.save(force_insert=True)
    return copy


def _copy_name(name: str) -> str:
    max_length = SmtpServer._meta.get_field("name").max_length or 100
    candidate = f"Copy of {name}"[:max_length]
    number = 2
    while SmtpServer.objects.filter(name=candidate).exists():
        suffix = f" ({number})"
        candidate = f"Copy of {name}"[: max_length - len(suffix)] + suffix
        number += 1
    return candidate


def server_users(*, server: SmtpServer) -> list[str]:
    """What protects the server from deletion (the dispatchers sending through
    it), found through the relations themselves: smtpservers does not import
    the apps that depend on it."""
    collector = Collector(using=router.db_for_write(SmtpServer))
    try:
        collector.collect([server])
    except ProtectedError as exc:
        return sorted(str(obj) for obj in exc.protected_objects)
    return []
