"""SMTP server services: test the connection, record its status, duplicate."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, connections, router, transaction
from django.db.models import ProtectedError, Q, QuerySet
from django.db.models.deletion import Collector
from django.urls import reverse
from django.utils import timezone

from jobs.models import Notification
from jobs.services import notification_raise, notification_resolve

from .client import SessionError, session_open, session_quit
from .models import PersonalServer, SmtpServer
from .oauth import notification_key as oauth_notification_key

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
    if report.ok:  # the login works again: the rejected-login notice is done
        notification_resolve(key=auth_notification_key(server))
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
                if ok:
                    notification_resolve(key=auth_notification_key(server))
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


# --- a login the server rejects while sending ----------------------------------


def auth_notification_key(server: SmtpServer) -> str:
    # OAuth 2.0 servers share the key of a failed refresh, so generating
    # tokens again (which resolves that key) clears this one too.
    if server.uses_oauth2:
        return oauth_notification_key(server)
    return f"smtpserver:{server.pk}:auth"


def server_record_auth_rejected(*, server: SmtpServer, error: str) -> list[str]:
    """The server refused Herald's login while sending (an XOAUTH2 bearer,
    a password, a POP-before-SMTP login). Retrying cannot help, so every
    dispatcher sending through the server stops, with the reason, and the
    administrators are told what to do. Returns the names of the
    dispatchers stopped by this call."""
    # dispatchers depend on smtpservers; imported here, as jobs does, so
    # the modules load in one direction and the stop still covers them all.
    from dispatchers.models import Dispatcher
    from dispatchers.services import dispatcher_pause

    connection_status_record(
        server=server, ok=False, message=f"Sending failed: login rejected. {error}"
    )
    reason = f"Stopped: the SMTP server “{server.name}” rejected the login. {error}"
    stopped = [
        dispatcher.name
        for dispatcher in Dispatcher.objects.filter(smtp_server=server, is_enabled=True)
        if dispatcher_pause(dispatcher=dispatcher, reason=reason)
    ]
    on_server = list(
        Dispatcher.objects.filter(smtp_server=server)
        .order_by("name")
        .values_list("name", flat=True)
    )
    if error.startswith("POP3 login rejected"):
        todo = (
            "What to do: correct the POP3 account name and password under POP before SMTP, "
            "use “Test connection”, then resume the dispatchers in the job manager."
        )
    elif server.uses_oauth2:
        todo = (
            "What to do: Generate tokens again (open the server and click “Generate tokens”), "
            "then resume the dispatchers in the job manager."
        )
    else:
        todo = (
            "What to do: correct the account name and password on the server, use “Test "
            "connection”, then resume the dispatchers in the job manager."
        )
    names = ", ".join(on_server) or "none"
    notification_raise(
        key=auth_notification_key(server),
        title=f"SMTP server “{server.name}” rejected the login: its dispatchers stopped",
        message=f"{error} Dispatchers on this server: {names}. {todo}",
        level=Notification.Level.ERROR,
        link=reverse("admin:smtpservers_smtpserver_change", args=[server.pk]),
    )
    return stopped


def server_record_auth_rejected_from_send(*, server: SmtpServer, error: str) -> None:
    """server_record_auth_rejected for senders: in its own thread and
    connection, so the stop is kept even if the caller's transaction rolls
    back, and waits on no row lock the caller may hold."""

    def write() -> None:
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL lock_timeout = '2s'")
                # Seen from this connection: a server deleted meanwhile (or
                # one only the caller's transaction knows) has nothing to stop.
                if SmtpServer.objects.filter(pk=server.pk).exists():
                    server_record_auth_rejected(server=server, error=error)
        except DatabaseError:
            logger.warning("could not stop the dispatchers of SMTP server %s", server.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=write, name="herald-smtp-auth")
    thread.start()
    thread.join()


# --- personal outbound server ---------------------------------------------------


def personal_servers_offered() -> QuerySet[SmtpServer]:
    """What a user may pick: active servers an administrator offers for it."""
    return SmtpServer.objects.filter(is_active=True, personal_use=True).order_by("name")


def personal_server_for(*, user: AbstractBaseUser) -> SmtpServer | None:
    """The server for the test sends ``user`` makes from the UI, or None (use
    the dispatcher's). A server since deactivated or no longer offered is
    None too, so a test send never goes where an administrator closed."""
    if not user.is_authenticated:
        return None
    choice = (
        PersonalServer.objects.filter(
            user=user, smtp_server__is_active=True, smtp_server__personal_use=True
        )
        .select_related("smtp_server")
        .first()
    )
    return choice.smtp_server if choice else None


def personal_server_set(*, user: AbstractBaseUser, server: SmtpServer | None) -> None:
    """Pick ``server`` for ``user``'s test sends, or None to use the dispatcher's."""
    if server is None:
        PersonalServer.objects.filter(user=user).delete()
        return
    if not personal_servers_offered().filter(pk=server.pk).exists():
        raise ValidationError(
            f"“{server.name}” is not offered as a personal outbound server; pick another."
        )
    PersonalServer.objects.update_or_create(user=user, defaults={"smtp_server": server})
