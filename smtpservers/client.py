"""Opening an SMTP session with every setting of an SmtpServer.

One code path for "Test connection" and for sending: POP-before-SMTP
when configured, connect (implicit TLS for SSL), read the greeting, EHLO,
STARTTLS and EHLO again, AUTH as configured (refreshing an OAuth 2.0
access token first when it is about to expire). A failure raises
SessionError naming the step and saying, in an administrator's words,
what went wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import poplib
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiosmtplib
import spnego
from aiosmtplib.errors import SMTPAuthenticationError

from .encryption import reveal
from .oauth import OAuthError, oauth_refresh_due, oauth_token_refresh_detached

if TYPE_CHECKING:
    from .models import SmtpServer


class Step(enum.StrEnum):
    SETTINGS = "settings"
    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "EHLO"
    TLS = "TLS"
    POP = "POP-before-SMTP"
    AUTH = "AUTH"
    QUIT = "QUIT"


class SessionError(Exception):
    """A step of the session failed; ``str()`` is the message for people."""

    def __init__(self, step: Step, message: str, *, auth_rejected: bool = False) -> None:
        super().__init__(message)
        self.step = step
        self.auth_rejected = auth_rejected


@dataclass
class Session:
    client: aiosmtplib.SMTP
    banner: str
    extensions: list[str] = field(default_factory=list)
    auth_mechanism: str = ""


def tls_context(server: SmtpServer) -> ssl.SSLContext:
    if not server.verify_certificate:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # A CA bundle replaces the system's trust store for this one server.
    return ssl.create_default_context(cadata=server.ca_bundle.strip() or None)


async def session_open(server: SmtpServer) -> Session:
    """Connect, secure, greet and log in; close and raise SessionError on failure."""
    if server.insecure_auth and not server.allow_insecure_auth:
        raise SessionError(
            Step.SETTINGS,
            "Refused to send the credentials over an unencrypted connection. Choose SSL or "
            "STARTTLS as the type of encryption connection, or tick “Allow login without "
            "encryption” if this network is trusted.",
        )
    if server.pop_before_smtp:
        # Blocking poplib in a thread: it is one short login per session.
        await asyncio.to_thread(pop_login, server)
    await _resolve(server)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        timeout=server.timeout,
        local_hostname=server.helo_name or None,
        use_tls=server.security == server.Security.SSL,
        start_tls=False,  # done below, as its own step
        tls_context=tls_context(server) if server.security != server.Security.NONE else None,
    )
    try:
        return await _open(server, client)
    except BaseException:
        client.close()
        raise


async def _open(server: SmtpServer, client: aiosmtplib.SMTP) -> Session:
    address = f"{server.host}:{server.port}"
    try:
        greeting = await client.connect()
    except aiosmtplib.SMTPConnectTimeoutError as exc:
        waiting = "for its greeting" if "ready message" in str(exc) else "to connect"
        raise SessionError(
            Step.CONNECT,
            f"Timed out: no answer from {address} within {server.timeout} seconds "
            f"(waiting {waiting}).",
        ) from exc
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise SessionError(
            Step.GREETING,
            f"The server refused the session in its greeting: {exc.code} {exc.message}",
        ) from exc
    except aiosmtplib.SMTPConnectError as exc:
        raise SessionError(Step.CONNECT, _connect_failure(exc, address, server)) from exc
    await _ehlo(client)
    if server.security == server.Security.STARTTLS:
        await _starttls(server, client)
    mechanism = await _authenticate(server, client)
    return Session(
        client=client,
        banner=greeting.message,
        extensions=sorted(client.esmtp_extensions),
        auth_mechanism=mechanism,
    )


async def _resolve(server: SmtpServer) -> None:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM),
            timeout=server.timeout,
        )
    except socket.gaierror as exc:
        raise SessionError(
            Step.CONNECT,
            f"Name not found: “{server.host}” does not resolve to an address "
            f"({exc.strerror}). Check the host name.",
        ) from exc
    except TimeoutError as exc:
        raise SessionError(
            Step.CONNECT,
            f"Timed out looking up “{server.host}” (no DNS answer within "
            f"{server.timeout} seconds).",
        ) from exc


def _connect_failure(exc: BaseException, address: str, server: SmtpServer) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _certificate_failure(cause)
    if isinstance(cause, ConnectionRefusedError):
        return f"Connection refused: nothing accepts connections on {address}."
    if isinstance(cause, ssl.SSLError):
        return (
            f"The TLS handshake with {address} failed ({cause.reason or cause}). "
            "Is this port really implicit TLS (SSL)? Port 587 usually wants STARTTLS."
        )
    if isinstance(cause, aiosmtplib.SMTPServerDisconnected) or "closed" in str(exc).lower():
        return f"The server at {address} closed the connection before greeting."
    if isinstance(cause, OSError) and cause.strerror:
        return f"Could not connect to {address}: {cause.strerror}."
    return f"Could not connect to {address}: {exc}."


def _certificate_failure(exc: ssl.SSLCertVerificationError) -> str:
    reason = exc.verify_message or exc.reason or str(exc)
    return (
        f"Certificate not trusted: {reason}. Supply the CA bundle that issued the "
        "server's certificate, or check the host name."
    )


def _disconnected(step: Step, exc: BaseException) -> SessionError:
    return SessionError(step, f"The server closed the connection during {step} ({exc}).")


def _timed_out(step: Step, server: SmtpServer, exc: BaseException) -> SessionError:
    return SessionError(
        step, f"Timed out: no reply to {step} within {server.timeout} seconds ({exc})."
    )


async def _ehlo(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        raise SessionError(
            Step.EHLO, f"The server rejected EHLO: {exc.code} {exc.message}"
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise SessionError(Step.EHLO, f"Timed out: no reply to EHLO ({exc}).") from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise _disconnected(Step.EHLO, exc) from exc


async def _starttls(server: SmtpServer, client: aiosmtplib.SMTP) -> None:
    if not client.supports_extension("starttls"):
        raise SessionError(
            Step.TLS,
            "TLS not offered: the server does not announce STARTTLS. Choose SSL if this "
            "port speaks implicit TLS (usually 465), or ask the mail administrator.",
        )
    try:
        await client.starttls()
    except ssl.SSLCertVerificationError as exc:
        raise SessionError(Step.TLS, _certificate_failure(exc)) from exc
    except ssl.SSLError as exc:
        raise SessionError(Step.TLS, f"The TLS handshake failed ({exc.reason or exc}).") from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise SessionError(
            Step.TLS, f"The server refused STARTTLS: {exc.code} {exc.message}"
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise _timed_out(Step.TLS, server, exc) from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise SessionError(Step.TLS, _certificate_failure(cause)) from exc
        raise _disconnected(Step.TLS, exc) from exc
    await _ehlo(client)


async def _authenticate(server: SmtpServer, client: aiosmtplib.SMTP) -> str:
    method = server.auth_method
    if method == server.AuthMethod.NONE:
        return ""
    offered = [m.upper() for m in client.server_auth_methods]
    if not offered:
        hint = " Many servers offer it only over TLS." if server.security == "none" else ""
        raise SessionError(
            Step.AUTH,
            "The server does not offer authentication (no AUTH in its reply to EHLO)." + hint,
        )
    try:
        if method == server.AuthMethod.CLEAR_TEXT:
            return await _auth_clear(server, client, offered)
        if method == server.AuthMethod.NTLM:
            return await _auth_ntlm(server, client, offered)
        return await _auth_xoauth2(server, client, offered)
    except SMTPAuthenticationError as exc:
        raise SessionError(
            Step.AUTH,
            f"Authentication rejected: {exc.code} {exc.message}",
            auth_rejected=True,
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise _timed_out(Step.AUTH, server, exc) from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise _disconnected(Step.AUTH, exc) from exc


def _not_offered(wanted: str, offered: list[str]) -> SessionError:
    return SessionError(
        Step.AUTH,
        f"The server does not offer {wanted}; it offers AUTH {' '.join(offered)}. "
        "Choose another authentication type.",
    )


async def _auth_clear(server: SmtpServer, client: aiosmtplib.SMTP, offered: list[str]) -> str:
    password = reveal(server.password)
    if "PLAIN" in offered:
        await client.auth_plain(server.username, password)
        return "PLAIN"
    if "LOGIN" in offered:
        await client.auth_login(server.username, password)
        return "LOGIN"
    raise _not_offered("clear-text login (AUTH PLAIN or LOGIN)", offered)


async def _auth_ntlm(server: SmtpServer, client: aiosmtplib.SMTP, offered: list[str]) -> str:
    if "NTLM" not in offered:
        raise _not_offered("NTLM", offered)
    context = spnego.client(
        server.username,
        reveal(server.password),
        hostname=server.host,
        service="SMTP",
        protocol="ntlm",
    )
    negotiate = context.step()
    assert negotiate is not None
    reply = await client.execute_command(b"AUTH", b"NTLM", base64.b64encode(negotiate))
    if reply.code != 334:
        raise SMTPAuthenticationError(reply.code, reply.message)
    try:
        challenge = base64.b64decode(reply.message.strip(), validate=True)
        authenticate = context.step(challenge)
    except (ValueError, spnego.exceptions.SpnegoError) as exc:
        await client.execute_command(b"*")
        raise SessionError(
            Step.AUTH, f"The server's NTLM challenge could not be used ({exc})."
        ) from exc
    assert authenticate is not None
    reply = await client.execute_command(base64.b64encode(authenticate))
    if reply.code != 235:
        raise SMTPAuthenticationError(reply.code, reply.message)
    return "NTLM"


async def _auth_xoauth2(server: SmtpServer, client: aiosmtplib.SMTP, offered: list[str]) -> str:
    if "XOAUTH2" not in offered:
        raise _not_offered("OAuth 2.0 (AUTH XOAUTH2)", offered)
    if oauth_refresh_due(server=server):
        # In a thread: the refresh reads and writes the server row, which
        # Django will not do from inside an event loop.
        try:
            await asyncio.to_thread(oauth_token_refresh_detached, server=server)
        except OAuthError as exc:
            raise SessionError(
                Step.AUTH,
                f"Could not refresh the OAuth 2.0 access token: {exc} Generate tokens again.",
                auth_rejected=True,
            ) from exc
    token = reveal(server.oauth_access_token)
    if not token:
        raise SessionError(
            Step.AUTH, "There is no OAuth 2.0 access token yet: click “Generate tokens”."
        )
    await client.auth_xoauth2(server.username, token)
    return "XOAUTH2"


def pop_login(server: SmtpServer) -> None:
    """POP-before-SMTP: log in to the POP3 mailbox and quit, so the SMTP
    server accepts mail from this address for a while. SSL is implicit TLS;
    TLS is the STLS command (RFC 2595) before the login."""
    address = f"{server.pop_host}:{server.pop_port}"
    security = server.pop_security
    if security == server.Security.NONE and not server.allow_insecure_auth:
        raise SessionError(
            Step.POP,
            "Refused to send the POP3 password over an unencrypted connection. Choose SSL "
            "or TLS (STLS) as the POP3 type of encryption connection, or tick “Allow login "
            "without encryption” if this network is trusted.",
        )
    try:
        if security == server.Security.SSL:
            pop: poplib.POP3 = poplib.POP3_SSL(
                server.pop_host,
                server.pop_port,
                timeout=server.timeout,
                context=tls_context(server),
            )
        else:
            pop = poplib.POP3(server.pop_host, server.pop_port, timeout=server.timeout)
    except socket.gaierror as exc:
        raise SessionError(
            Step.POP,
            f"Name not found: the POP3 host “{server.pop_host}” does not resolve to an "
            f"address ({exc.strerror}).",
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise SessionError(Step.POP, f"POP3 server: {_certificate_failure(exc)}") from exc
    except ssl.SSLError as exc:
        raise SessionError(
            Step.POP,
            f"The TLS handshake with the POP3 server {address} failed ({exc.reason or exc}). "
            "Is this port really POP3 over SSL (usually 995)?",
        ) from exc
    except ConnectionRefusedError as exc:
        raise SessionError(
            Step.POP, f"Connection refused: nothing accepts POP3 connections on {address}."
        ) from exc
    except TimeoutError as exc:
        raise SessionError(
            Step.POP,
            f"Timed out: no answer from the POP3 server {address} within {server.timeout} seconds.",
        ) from exc
    except (OSError, poplib.error_proto) as exc:
        raise SessionError(
            Step.POP, f"Could not connect to the POP3 server {address}: {exc}."
        ) from exc
    try:
        if security == server.Security.STARTTLS:
            _pop_stls(pop, server, address)
        pop.user(server.pop_username)
        pop.pass_(reveal(server.pop_password))
        pop.quit()
    except poplib.error_proto as exc:
        raise SessionError(
            Step.POP, f"POP3 login rejected: {_pop_reply(exc)}", auth_rejected=True
        ) from exc
    except (TimeoutError, OSError) as exc:
        raise SessionError(
            Step.POP, f"The POP3 server {address} stopped answering during login ({exc})."
        ) from exc
    finally:
        # A failed STLS handshake leaves the socket half-wrapped; closing it
        # must not hide the error that says why.
        with contextlib.suppress(OSError):
            pop.close()


def _pop_reply(exc: poplib.error_proto) -> str:
    if exc.args and isinstance(exc.args[0], bytes):
        return exc.args[0].decode(errors="replace")
    return str(exc)


def _pop_stls(pop: poplib.POP3, server: SmtpServer, address: str) -> None:
    """Upgrade to TLS before the password goes out; any failure stops here."""
    try:
        pop.stls(context=tls_context(server))
    except poplib.error_proto as exc:
        reply = _pop_reply(exc)
        if "not supported" in reply:
            raise SessionError(
                Step.POP,
                f"TLS not offered: the POP3 server {address} does not announce STLS. Choose "
                "SSL if this port speaks implicit TLS (usually 995), or ask the mail "
                "administrator.",
            ) from exc
        raise SessionError(Step.POP, f"The POP3 server refused STLS: {reply}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise SessionError(Step.POP, f"POP3 server: {_certificate_failure(exc)}") from exc
    except ssl.SSLError as exc:
        raise SessionError(
            Step.POP,
            f"The TLS handshake (STLS) with the POP3 server {address} failed "
            f"({exc.reason or exc}).",
        ) from exc


async def session_quit(client: aiosmtplib.SMTP, server: SmtpServer) -> None:
    try:
        await client.quit()
    except aiosmtplib.SMTPResponseException as exc:
        raise SessionError(
            Step.QUIT, f"The server answered QUIT with {exc.code} {exc.message}"
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise _timed_out(Step.QUIT, server, exc) from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise _disconnected(Step.QUIT, exc) from exc
    finally:
        client.close()
