"""Sessions with a bounce mailbox, over POP3 or IMAP, behind one small
interface: list the waiting messages, fetch one, remove one.

What "remove" means differs, and both are safe against a run that dies
half-way: POP3 marks with DELE and deletes only at QUIT; IMAP flags
\\Deleted (or moves, which is atomic) and expunges when the session ends
normally. A session that breaks closes the socket without QUIT/EXPUNGE.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from smtpservers.encryption import Secret

from .models import BounceMailbox

# What a broken or refusing session raises; the job turns these into a
# MailboxError with _describe's text.
SESSION_ERRORS = (OSError, poplib.error_proto, imaplib.IMAP4.error)


class MailboxError(Exception):
    """The mailbox could not be read; the message says why, for people."""


@dataclass(frozen=True)
class Listed:
    ref: str  # POP3 message number or IMAP UID, valid for this session
    uid: str | None  # a stable id, when the server gives one (POP3 UIDL)


class Session(Protocol):
    def listing(self) -> list[Listed]: ...
    def fetch(self, ref: str) -> bytes | None: ...
    def remove(self, ref: str) -> None: ...
    def summary(self) -> str: ...


# --- shared -----------------------------------------------------------------------


def tls_context(mailbox: BounceMailbox) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not mailbox.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def password(mailbox: BounceMailbox) -> str:
    value = mailbox.password
    return value.reveal() if isinstance(value, Secret) else str(value or "")


def _reply_text(exc: BaseException) -> str:
    reply = exc.args[0] if exc.args else b""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def describe(exc: BaseException, mailbox: BounceMailbox) -> str:
    where = f"{mailbox.host}:{mailbox.port}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"No answer from {where} within {mailbox.timeout} s."
    if isinstance(exc, ConnectionRefusedError):
        return f"Connection refused by {where}: is the port right and the server running?"
    if isinstance(exc, socket.gaierror):
        return f"Host {mailbox.host} not found."
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"The server's certificate is not trusted: {exc.verify_message}."
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where}: {exc.reason or exc}."
    if isinstance(exc, poplib.error_proto | imaplib.IMAP4.error):
        return f"The server refused: {_reply_text(exc)}"
    if isinstance(exc, OSError):
        return f"Cannot connect to {where}: {exc.strerror or exc}."
    return f"{type(exc).__name__}: {exc}"


def _quietly(close: Callable[[], object]) -> None:
    # Closing a socket a failed TLS handshake left half-open may itself
    # fail; the first error is the one to report.
    try:
        close()
    except OSError:
        pass


def xoauth2(username: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format)."""
    return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()


# Gives the (fresh) access token of an OAuth 2.0 mailbox; services passes
# it in, so this module knows nothing of the token handling.
AccessToken = Callable[[BounceMailbox], str]


@contextmanager
def session_open(
    mailbox: BounceMailbox, *, access_token: AccessToken | None = None, readonly: bool = False
) -> Iterator[Session]:
    """A logged-in session. Leaving the block normally commits removals
    (QUIT, EXPUNGE); an exception closes the socket and removes nothing.
    A read-only session (Test connection) removes nothing either way."""
    opener = _imap if mailbox.protocol == BounceMailbox.Protocol.IMAP else _pop3
    # The token first (it may be refreshed over HTTP), then the connection.
    token = access_token(mailbox) if access_token is not None else None
    try:
        with opener(mailbox, token, readonly) as session:
            yield session
    except MailboxError:
        raise
    except SESSION_ERRORS as exc:
        raise MailboxError(describe(exc, mailbox)) from exc


# --- POP3 ---------------------------------------------------------------------------


class Pop3Session:
    def __init__(self, client: poplib.POP3) -> None:
        self.client = client

    def listing(self) -> list[Listed]:
        """UIDL is optional in RFC 1939; without it the job identifies a
        message by a digest of its bytes."""
        try:
            _, lines, _ = self.client.uidl()
        except poplib.error_proto:
            _, lines, _ = self.client.list()
            return [Listed(line.split()[0].decode(), None) for line in lines]
        listing = []
        for line in lines:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            listing.append(Listed(number, uid.strip()[:255]))
        return listing

    def fetch(self, ref: str) -> bytes:
        # poplib has already undone the dot-stuffing of each line.
        return b"\r\n".join(self.client.retr(int(ref))[1]) + b"\r\n"

    def remove(self, ref: str) -> None:
        self.client.dele(int(ref))

    def summary(self) -> str:
        count, size = self.client.stat()
        return f"{count} message(s) waiting ({size} bytes)"


def _pop3_xoauth2(client: poplib.POP3, username: str, token: str) -> None:
    # RFC 5034: AUTH, the server's "+" challenge, then the response. poplib
    # has no AUTH command, hence its private helpers.
    client._putcmd("AUTH XOAUTH2")  # noqa: SLF001
    reply = client._getline()[0]  # noqa: SLF001
    if not reply.startswith(b"+"):
        raise poplib.error_proto(reply)
    client._putcmd(base64.b64encode(xoauth2(username, token)).decode())  # noqa: SLF001
    reply = client._getline()[0]  # noqa: SLF001
    if reply.startswith(b"+OK"):
        return
    if reply.startswith(b"+"):
        # A refused token comes as a challenge carrying the error (RFC 7628);
        # an empty answer gets the final -ERR.
        client._putcmd("")  # noqa: SLF001
        reply = client._getline()[0]  # noqa: SLF001
    raise poplib.error_proto(reply)


@contextmanager
def _pop3(mailbox: BounceMailbox, token: str | None, readonly: bool) -> Iterator[Session]:
    if mailbox.security == BounceMailbox.Security.SSL:
        client: poplib.POP3 = poplib.POP3_SSL(
            mailbox.host, mailbox.port, timeout=mailbox.timeout, context=tls_context(mailbox)
        )
    else:
        client = poplib.POP3(mailbox.host, mailbox.port, timeout=mailbox.timeout)
    try:
        if mailbox.security == BounceMailbox.Security.STARTTLS:
            client.stls(context=tls_context(mailbox))
        if token is not None:
            _pop3_xoauth2(client, mailbox.username, token)
        else:
            client.user(mailbox.username)
            client.pass_(password(mailbox))
        yield Pop3Session(client)
    except BaseException:
        _quietly(client.close)
        raise
    try:
        client.quit()
    except SESSION_ERRORS as exc:
        raise MailboxError(f"QUIT failed, nothing was deleted: {describe(exc, mailbox)}") from exc


# --- IMAP ----------------------------------------------------------------------------


def imap_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501, 5.1.3)."""
    out, pending = [], []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode()
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def imap_quote(name: str) -> str:
    # imaplib sends arguments as they are; a folder name is a quoted string.
    encoded = imap_utf7(name).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'


def _ok(answer: tuple[str, list], what: str) -> list:
    kind, data = answer
    if kind != "OK":
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise MailboxError(f"{what}: the server answered {kind} {text}".strip())
    return data


class ImapSession:
    def __init__(self, client: imaplib.IMAP4, mailbox: BounceMailbox) -> None:
        self.client = client
        self.mailbox = mailbox
        self.waiting = 0
        self.target_checked = False
        # The capabilities after login (imaplib keeps those of the greeting).
        listed = b" ".join(d for d in _ok(client.capability(), "CAPABILITY failed") if d)
        self.capabilities = set(listed.decode().upper().split())

    def select(self, readonly: bool = False) -> None:
        data = _ok(
            self.client.select(imap_quote(self.mailbox.folder), readonly=readonly),
            f"Cannot open the folder “{self.mailbox.folder}”",
        )
        self.waiting = int(data[0] or 0)

    def listing(self) -> list[Listed]:
        # Messages flagged \Deleted were recorded by a run that died before
        # EXPUNGE; this session's EXPUNGE removes them.
        [found] = _ok(self.client.uid("SEARCH", "UNDELETED"), "Cannot list the messages")
        return [Listed(uid.decode(), None) for uid in (found or b"").split()]

    def fetch(self, ref: str) -> bytes | None:
        # PEEK: a message that is kept stays unread for the person who looks.
        data = _ok(self.client.uid("FETCH", ref, "(BODY.PEEK[])"), f"Cannot read message {ref}")
        # One UID was asked for: the message is the literal of the answer
        # (servers differ in where they put UID in it); none if it was
        # expunged meanwhile by someone else.
        for part in data:
            if isinstance(part, tuple) and b"BODY[]" in part[0].upper():
                return part[1]
        return None

    def remove(self, ref: str) -> None:
        target = self.mailbox.move_to_folder
        if not target:
            _ok(
                self.client.uid("STORE", ref, "+FLAGS.SILENT", r"(\Deleted)"),
                f"Cannot delete message {ref}",
            )
            return
        self._target_ensure()
        if "MOVE" in self.capabilities:
            _ok(self.client.uid("MOVE", ref, imap_quote(target)), f"Cannot move message {ref}")
            return
        _ok(self.client.uid("COPY", ref, imap_quote(target)), f"Cannot copy message {ref}")
        _ok(
            self.client.uid("STORE", ref, "+FLAGS.SILENT", r"(\Deleted)"),
            f"Cannot delete message {ref}",
        )

    def _target_ensure(self) -> None:
        if self.target_checked:
            return
        if not self.target_exists():
            _ok(
                self.client.create(imap_quote(self.mailbox.move_to_folder)),
                f"Cannot create the folder “{self.mailbox.move_to_folder}”",
            )
        self.target_checked = True

    def target_exists(self) -> bool:
        data = _ok(
            self.client.list('""', imap_quote(self.mailbox.move_to_folder)),
            "Cannot list the folders",
        )
        return any(item is not None for item in data)

    def summary(self) -> str:
        text = f"{self.waiting} message(s) waiting in “{self.mailbox.folder}”"
        if self.mailbox.move_to_folder and not self.target_exists():
            text += f"; “{self.mailbox.move_to_folder}” will be created"
        return text


def _imap_xoauth2(username: str, token: str) -> Callable[[bytes], bytes]:
    answered = []

    def respond(challenge: bytes) -> bytes:
        # The credentials once; a second challenge carries the error
        # (RFC 7628), answered empty to get the final NO.
        if answered:
            return b""
        answered.append(True)
        return xoauth2(username, token)

    return respond


@contextmanager
def _imap(mailbox: BounceMailbox, token: str | None, readonly: bool) -> Iterator[Session]:
    if mailbox.security == BounceMailbox.Security.SSL:
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            mailbox.host, mailbox.port, ssl_context=tls_context(mailbox), timeout=mailbox.timeout
        )
    else:
        client = imaplib.IMAP4(mailbox.host, mailbox.port, timeout=mailbox.timeout)
    try:
        if mailbox.security == BounceMailbox.Security.STARTTLS:
            client.starttls(ssl_context=tls_context(mailbox))
        if token is not None:
            client.authenticate("XOAUTH2", _imap_xoauth2(mailbox.username, token))
        else:
            client.login(mailbox.username, password(mailbox))
        session = ImapSession(client, mailbox)
        session.select(readonly=readonly)
        yield session
    except BaseException:
        _quietly(client.shutdown)
        raise
    try:
        # Always, not only when this session removed something: messages
        # flagged by a run that died before EXPUNGE go now.
        if not readonly:
            _ok(client.expunge(), "EXPUNGE failed, nothing was deleted")
        client.logout()
    except SESSION_ERRORS as exc:
        raise MailboxError(
            f"EXPUNGE failed, nothing was deleted: {describe(exc, mailbox)}"
        ) from exc
