"""A small but complete POP3 server (RFC 1939, with CAPA from RFC 2449 and
STLS from RFC 2595) for the tests: the real protocol peer at our edge.

One maildrop, one user. The maildrop is locked for the length of a
session, as RFC 1939 requires; messages marked with DELE are removed only
when the client sends QUIT, and a session that ends any other way
removes nothing. ``fail_on`` makes the server hang up when it receives a
given command, to test what a client does when the connection dies.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Stored:
    uid: str
    data: bytes


@dataclass
class Maildrop:
    user: str = "bounces"
    password: str = "s3cret"
    messages: list[Stored] = field(default_factory=list)
    locked: bool = False
    _counter: int = 0

    def add(self, data: bytes) -> str:
        self._counter += 1
        uid = f"uid-{self._counter:04d}"
        self.messages.append(Stored(uid, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")))
        return uid

    def uids(self) -> list[str]:
        return [m.uid for m in self.messages]


class Session:
    def __init__(
        self, server: Pop3Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.drop = server.maildrop
        self.reader = reader
        self.writer = writer
        self.user: str | None = None
        self.messages: list[Stored] | None = None  # set in the TRANSACTION state
        self.deleted: set[int] = set()
        self.tls = server.implicit_tls

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def send_multi(self, first: str, lines: list[bytes]) -> None:
        out = [first.encode()]
        for line in lines:
            out.append(b"." + line if line.startswith(b".") else line)  # byte-stuffing
        out.append(b".")
        self.writer.write(b"\r\n".join(out) + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.send("+OK Herald test POP3 server ready")
        try:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                self.server.log.append(verb if verb != "PASS" else "PASS ***")
                if verb == self.server.fail_on:
                    return  # hang up without answering
                if verb == "QUIT":
                    await self.quit()
                    return
                await self.dispatch(verb, arg)
        finally:
            if self.messages is not None:
                self.drop.locked = False
            self.writer.close()

    async def dispatch(self, verb: str, arg: str) -> None:
        if verb == "CAPA":
            caps = ["USER", "TOP"] + (["UIDL"] if self.server.uidl else [])
            if self.server.tls_context is not None and not self.tls and self.messages is None:
                caps.append("STLS")
            await self.send_multi("+OK Capability list follows", [c.encode() for c in caps])
            return
        if self.messages is None:
            await self.authorization(verb, arg)
        else:
            await self.transaction(verb, arg)

    async def authorization(self, verb: str, arg: str) -> None:
        if verb == "STLS" and self.server.tls_context is not None and not self.tls:
            await self.send("+OK Begin TLS negotiation")
            await self.writer.start_tls(self.server.tls_context)
            self.tls = True
            return
        if verb == "USER" and arg:
            self.user = arg
            await self.send("+OK")
            return
        if verb == "PASS" and self.user is not None:
            if self.user != self.drop.user or arg != self.drop.password:
                self.user = None
                await self.send("-ERR [AUTH] Invalid login")
                return
            if self.drop.locked:
                await self.send("-ERR [IN-USE] Maildrop already locked")
                return
            self.drop.locked = True
            self.messages = list(self.drop.messages)
            await self.send(f"+OK Logged in, {len(self.messages)} messages")
            return
        await self.send("-ERR Not allowed before login")

    def message(self, arg: str) -> tuple[int, Stored] | None:
        assert self.messages is not None
        try:
            number = int(arg)
        except ValueError:
            return None
        if not 1 <= number <= len(self.messages) or number in self.deleted:
            return None
        return number, self.messages[number - 1]

    def live(self) -> list[tuple[int, Stored]]:
        assert self.messages is not None
        return [(n, m) for n, m in enumerate(self.messages, 1) if n not in self.deleted]

    async def transaction(self, verb: str, arg: str) -> None:
        args = arg.split()
        if verb == "NOOP":
            await self.send("+OK")
        elif verb == "STAT":
            live = self.live()
            await self.send(f"+OK {len(live)} {sum(len(m.data) for _, m in live)}")
        elif verb in ("LIST", "UIDL"):
            if verb == "UIDL" and not self.server.uidl:
                await self.send("-ERR Unknown command")
                return

            def show(n: int, m: Stored) -> str:
                return f"{n} {len(m.data) if verb == 'LIST' else m.uid}"

            if args:
                found = self.message(args[0])
                if found is None:
                    await self.send("-ERR No such message")
                else:
                    await self.send("+OK " + show(*found))
                return
            await self.send_multi("+OK", [show(n, m).encode() for n, m in self.live()])
        elif verb in ("RETR", "TOP"):
            found = self.message(args[0]) if args else None
            if found is None:
                await self.send("-ERR No such message")
                return
            lines = found[1].data.split(b"\r\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if verb == "TOP":
                body = lines.index(b"") if b"" in lines else len(lines)
                lines = lines[: body + 1 + int(args[1] if len(args) > 1 else 0)]
            await self.send_multi(f"+OK {len(found[1].data)} octets", lines)
        elif verb == "DELE":
            found = self.message(args[0]) if args else None
            if found is None:
                await self.send("-ERR No such message")
                return
            self.deleted.add(found[0])
            await self.send(f"+OK Message {found[0]} deleted")
        elif verb == "RSET":
            self.deleted.clear()
            await self.send("+OK")
        else:
            await self.send("-ERR Unknown command")

    async def quit(self) -> None:
        if self.messages is not None:  # the UPDATE state
            gone = {id(m) for n, m in enumerate(self.messages, 1) if n in self.deleted}
            self.drop.messages = [m for m in self.drop.messages if id(m) not in gone]
        await self.send("+OK Bye")


class Pop3Server:
    """Runs in its own thread with its own event loop; ``port`` once started."""

    def __init__(
        self,
        maildrop: Maildrop,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        uidl: bool = True,
    ) -> None:
        self.maildrop = maildrop
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.uidl = uidl
        self.fail_on: str | None = None
        self.log: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> Pop3Server:
        self._thread.start()

        async def serve() -> asyncio.base_events.Server:
            return await asyncio.start_server(
                lambda r, w: Session(self, r, w).run(),
                "127.0.0.1",
                0,
                ssl=self.tls_context if self.implicit_tls else None,
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def server_tls_context() -> ssl.SSLContext:
    """A context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pop3.herald.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="herald-pop3-"))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context
