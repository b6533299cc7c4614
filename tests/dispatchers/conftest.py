"""The cast of the sender-domain tests: a DNS server the resolver is
pointed at through settings, an SMTP server, a dispatcher relaying
through it and the domain it sends from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.test import Client

from accounts.roles import ADMINISTRATOR
from accounts.services import user_create
from dispatchers.domains import sender_domain_create
from dispatchers.models import Dispatcher, SenderDomain
from smtpservers.models import SmtpServer

from .dns import DnsServer, Zone

DOMAIN = "example.org"


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def settings_for_domains(settings: Any, dns_server: DnsServer) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.HERALD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    settings.HERALD_DNS_NAMESERVERS = ["127.0.0.1"]
    settings.HERALD_DNS_PORT = dns_server.port
    settings.HERALD_REQUIRE_VERIFIED_DOMAINS = False
    settings.HERALD_BOUNCE_DOMAIN = ""


@pytest.fixture
def zone(dns_server: DnsServer) -> Iterator[Zone]:
    dns_server.zone.clear()
    yield dns_server.zone
    dns_server.zone.clear()


@pytest.fixture
def smtp_server(db: None) -> SmtpServer:
    return SmtpServer.objects.create(name="Relay", host="127.0.0.1", port=2525, timeout=5)


@pytest.fixture
def dispatcher(smtp_server: SmtpServer) -> Dispatcher:
    return Dispatcher.objects.create(
        name="Newsletter",
        server_name="mailer1",
        smtp_server=smtp_server,
        from_email=f"news@{DOMAIN}",
        from_name="Example News",
    )


@pytest.fixture
def domain(db: None) -> SenderDomain:
    return sender_domain_create(domain=DOMAIN, dmarc_report_email=f"dmarc@{DOMAIN}")


def publish_correct(zone: Zone, domain: SenderDomain) -> None:
    """The records Herald shows, published as shown."""
    zone.txt(domain.domain, "v=spf1 ip4:127.0.0.1 ~all")
    zone.txt(f"{domain.dkim_selector}._domainkey.{domain.domain}", dkim_value(domain))
    zone.txt(f"_dmarc.{domain.domain}", f"v=DMARC1; p=none; rua=mailto:dmarc@{domain.domain}")


def dkim_value(domain: SenderDomain, selector: str = "") -> str:
    if selector and selector == domain.pending_selector:
        return f"v=DKIM1; k=rsa; p={domain.pending_public_key}"
    return f"v=DKIM1; k=rsa; p={domain.dkim_public_key}"


@pytest.fixture
def administrator_client(db: None, client: Client) -> Client:
    user = user_create(
        username="ada", email="ada@example.org", password="x-Pass-4567", role=ADMINISTRATOR
    )
    client.force_login(user)
    return client
