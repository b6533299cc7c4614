"""Direct delivery: each recipient's own mail server, found through DNS.

The recipient domain's MX records (sorted by preference; the domain's
own A/AAAA record when it has none, RFC 5321 5.1) name the hosts to try
in turn. Sessions are opened by smtpservers.client, the code the relay
uses, with the dispatcher's HELO name, and kept for the batch: one per
destination domain, reused for all its recipients. STARTTLS is used when
offered, without certificate checks, as MTAs do between themselves.

A domain whose servers cannot be reached is deferred for this batch
(every recipient there gets the same transient result, without a new
connection attempt each); one that cannot receive mail at all (no such
domain, a null MX) fails permanently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import dns.exception
import dns.resolver
from django.conf import settings

from smtpservers.client import SessionError, session_open
from smtpservers.models import SmtpServer

from .base import ConnectionLost, Outcome, SendResult, Transport, message_bytes
from .smtp import sendmail

# Per connection attempt and per command; several MX hosts multiply it.
TIMEOUT = 30


@dataclass(frozen=True)
class Route:
    hosts: list[str]  # in the order to try
    problem: SendResult | None = None  # set when there is no way to deliver


def _resolve(name: str, rdtype: str) -> list[dns.rdata.Rdata]:
    from dispatchers.domains import resolver  # domains imports the models

    return list(resolver().resolve(name, rdtype, search=False))


def mx_route(domain: str) -> Route:
    """Where mail for ``domain`` goes, or why it cannot go anywhere."""
    try:
        records = _resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        return Route([], _permanent("5.1.2", f"The domain {domain} does not exist."))
    except dns.resolver.NoAnswer:
        records = []
    except dns.exception.DNSException as exc:
        return Route([], _transient("4.4.3", f"DNS look-up of {domain} (MX) failed: {exc}"))
    hosts = [
        str(r.exchange).rstrip(".").lower()  # type: ignore[attr-defined]
        for r in sorted(records, key=lambda r: r.preference)  # type: ignore[attr-defined]
    ]
    if hosts == [""]:  # RFC 7505 null MX: "this domain accepts no mail"
        return Route([], _permanent("5.1.10", f"The domain {domain} accepts no mail (null MX)."))
    hosts = [h for h in hosts if h]
    return Route(hosts or [domain])


def host_addresses(host: str) -> list[str]:
    """The IP addresses of an MX host, IPv4 first; [] when it has none."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            found += [r.to_text() for r in _resolve(host, rdtype)]
        except dns.exception.DNSException:
            continue
    return found


def _permanent(enhanced: str, text: str) -> SendResult:
    return SendResult(Outcome.PERMANENT, 550, f"{enhanced} {text}", enhanced=enhanced)


def _transient(enhanced: str, text: str) -> SendResult:
    return SendResult(Outcome.TRANSIENT, 451, f"{enhanced} {text}", enhanced=enhanced)


def _opportunistic_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class DirectTransport(Transport):
    def __init__(self, *, helo_name: str, port: int | None = None) -> None:
        self.helo_name = helo_name
        self.port = port or settings.HERALD_DIRECT_SMTP_PORT
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[str, aiosmtplib.SMTP] = {}
        self._unreachable: dict[str, SendResult] = {}

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()

    def _run(self, coro):  # type: ignore[no-untyped-def]
        assert self._loop is not None, "open() first"
        return self._loop.run_until_complete(coro)

    def send(self, message: EmailMessage, *, sender: str, recipient: str) -> SendResult:
        domain = recipient.rpartition("@")[2].lower()
        if domain in self._unreachable:
            return self._unreachable[domain]
        client = self._sessions.get(domain)
        if client is None:
            found = self._connect(domain)
            if isinstance(found, SendResult):
                self._unreachable[domain] = found
                return found
            client = self._sessions[domain] = found
        try:
            return self._run(sendmail(client, sender, recipient, message_bytes(message)))
        except ConnectionLost as lost:
            self._drop(domain)
            if lost.result is not None:
                return lost.result  # closed with a verdict (421 rate limited)
            if lost.maybe_delivered:
                raise  # on the wire when it broke: the pipeline flags it, never hides it
            # One domain's server hanging up must not stop the batch for the others.
            return SendResult(Outcome.TRANSIENT, 421, str(lost), enhanced="4.4.2")

    def _connect(self, domain: str) -> aiosmtplib.SMTP | SendResult:
        route = mx_route(domain)
        if route.problem is not None:
            return route.problem
        tried: list[str] = []
        for host in route.hosts:
            addresses = host_addresses(host)
            if not addresses:
                tried.append(f"{host}: no address")
            for address in addresses:
                try:
                    return self._run(self._session(address))
                except (SessionError, TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                    tried.append(f"{host} ({address}): {exc}")
        return _transient(
            "4.4.1", f"No mail server of {domain} could be reached: " + "; ".join(tried)
        )

    async def _session(self, address: str) -> aiosmtplib.SMTP:
        server = SmtpServer(
            name=address,
            host=address,
            port=self.port,
            timeout=TIMEOUT,
            helo_name=self.helo_name,
            security=SmtpServer.Security.NONE,
            auth_method=SmtpServer.AuthMethod.NONE,
        )
        client = (await session_open(server)).client
        if not client.supports_extension("starttls"):
            return client
        try:
            await client.starttls(tls_context=_opportunistic_tls())
            await client.ehlo()
            return client
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError):
            client.close()
        # TLS offered but broken: deliver in the clear rather than not at all.
        return (await session_open(server)).client

    def _drop(self, domain: str) -> None:
        client = self._sessions.pop(domain, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for client in self._sessions.values():
            try:
                if client.is_connected:
                    self._run(client.quit())
            except Exception:  # noqa: BLE001 - closing must never fail a batch
                client.close()
        self._sessions.clear()
        self._unreachable.clear()
        if self._loop is not None:
            self._loop.close()
        self._loop = None
