"""Real peers for the SMTP server tests: aiosmtpd with TLS and every AUTH
mechanism Herald speaks (PLAIN, LOGIN, NTLM through pyspnego's acceptor,
XOAUTH2), plus the misbehaving ones: a 421 greeting, a server that never
answers, one that hangs up after EHLO. Certificates are made here."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spnego
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.smtp import free_port

USER, PASSWORD = "herald@example.org", "s3cret-Pass"
ACCESS_TOKEN = "ya29.a0-the-right-token"


# --- certificates ------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: str
    cert_file: Path  # signed by the CA, for 127.0.0.1 and localhost
    key_file: Path
    rogue_cert_file: Path  # self-signed: no client trusts it
    rogue_key_file: Path

    def server_context(self, *, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if rogue:
            context.load_cert_chain(self.rogue_cert_file, self.rogue_key_file)
        else:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path = directory / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Herald Test CA", ca_key, issuer="Herald Test CA", issuer_key=ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("127.0.0.1", key, issuer="Herald Test CA", issuer_key=ca_key, ca=False)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _certificate("127.0.0.1", rogue_key, issuer="127.0.0.1", issuer_key=rogue_key, ca=False)
    return Pki(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM).decode(),
        cert_file=write("server", cert, key),
        key_file=directory / "server.key",
        rogue_cert_file=write("rogue", rogue, rogue_key),
        rogue_key_file=directory / "rogue.key",
    )


# --- the aiosmtpd handler --------------------------------------------------------


@dataclass
class Handler:
    """Accepts mail and knows one account for each mechanism."""

    received: list[tuple[str, list[str], email.message.Message]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, who)
    helo_names: list[str] = field(default_factory=list)
    hang_up_after_ehlo: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        self.helo_names.append(hostname)
        session.host_name = hostname
        if self.hang_up_after_ehlo:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Ok: queued as Q1"

    async def auth_NTLM(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """A real NTLM handshake: pyspnego's acceptor checks the client's
        answer against NTLM_USER_FILE."""
        acceptor = spnego.server(protocol="ntlm", service="SMTP")
        try:
            negotiate = base64.b64decode(args[1]) if len(args) > 1 else None
            if negotiate is None:
                reply = await server.challenge_auth(b"", encode_to_b64=False)
                negotiate = reply if isinstance(reply, bytes) else b""
            challenge = acceptor.step(negotiate)
            answer = await server.challenge_auth(challenge or b"")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            acceptor.step(answer)
        except spnego.exceptions.SpnegoError:
            return AuthResult(
                success=False, handled=False, message="535 5.7.3 NTLM authentication failed"
            )
        if not acceptor.complete:
            return AuthResult(success=False, handled=False)
        self.logins.append(("NTLM", acceptor.client_principal or ""))
        return AuthResult(success=True, auth_data=LoginPassword(b"ntlm", b""))

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """Google's and Microsoft's behaviour: a bad bearer gets a base64 JSON
        challenge, then 535 once the client answers with an empty line."""
        fields = dict(
            part.split("=", 1)
            for part in base64.b64decode(args[1]).decode().split("\x01")
            if "=" in part
        )
        if fields.get("auth") == f"Bearer {ACCESS_TOKEN}" and fields.get("user") == USER:
            self.logins.append(("XOAUTH2", fields["user"]))
            return AuthResult(success=True, auth_data=LoginPassword(USER.encode(), b""))
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail/"})
        await server.challenge_auth(error)
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted. Learn more at "
            "https://support.google.com/mail/?p=BadCredentials",
        )


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@contextmanager
def smtp_server(
    pki: Pki | None = None,
    *,
    mode: str = "none",
    rogue: bool = False,
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
    auth_require_tls: bool = True,
    hang_up_after_ehlo: bool = False,
) -> Iterator[tuple[int, Handler]]:
    """aiosmtpd on a free port: mode "none", "starttls" or "ssl"."""
    handler = Handler(hang_up_after_ehlo=hang_up_after_ehlo)
    every = {"PLAIN", "LOGIN", "NTLM", "XOAUTH2"}
    kwargs: dict[str, Any] = {
        "authenticator": authenticator,
        # aiosmtpd counts only STARTTLS as TLS; implicit TLS is encrypted too.
        "auth_require_tls": auth_require_tls and mode != "ssl",
        "auth_exclude_mechanism": sorted(every - set(mechanisms)),
    }
    if mode == "ssl":
        assert pki is not None
        kwargs["ssl_context"] = pki.server_context(rogue=rogue)
    elif mode == "starttls":
        assert pki is not None
        kwargs["tls_context"] = pki.server_context(rogue=rogue)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


# --- servers that misbehave below aiosmtpd's level ------------------------------


@contextmanager
def raw_server(greeting: bytes | None) -> Iterator[int]:
    """Sends ``greeting`` and hangs up; with None, accepts and never speaks."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            if greeting is not None:
                conn.sendall(greeting)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def ntlm_user_file(directory: Path) -> Path:
    path = directory / "ntlm-users"
    path.write_text(f"EXAMPLE:herald:{PASSWORD}\n")
    return path
