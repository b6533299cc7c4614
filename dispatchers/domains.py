"""Sender domains: the DKIM key, the DNS records to publish, and checking them.

Look-ups go through one dnspython resolver built from settings
(HERALD_DNS_NAMESERVERS, HERALD_DNS_PORT), so a test or an installation
behind a split-horizon DNS points every check, DKIM verification
included, at the server it names.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.services import notification_raise, notification_resolve

from .models import Dispatcher, SenderDomain

Status = SenderDomain.Status
# RFC 7208 4.6.4: more than ten terms that cost a DNS look-up is a permerror.
SPF_LOOKUP_LIMIT = 10
_LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")
_DMARC_POLICIES = ("none", "quarantine", "reject")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DnsError(Exception):
    """The look-up itself failed (timeout, SERVFAIL): nothing is known."""


# --- DNS --------------------------------------------------------------------


def resolver() -> dns.resolver.Resolver:
    nameservers = list(settings.HERALD_DNS_NAMESERVERS)
    res = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        res.nameservers = nameservers
    res.port = settings.HERALD_DNS_PORT
    res.lifetime = 5.0
    return res


def _query(name: str, rdtype: str) -> list[dns.rdata.Rdata]:
    try:
        return list(resolver().resolve(name, rdtype, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DnsError(f"The DNS look-up of {name} ({rdtype}) failed: {exc}") from exc


def txt_records(name: str) -> list[str]:
    # A TXT record longer than 255 octets arrives as several strings that
    # together make one value (RFC 7208 3.3, RFC 6376 3.6.2.2).
    return [
        b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
        for rdata in _query(name, "TXT")
    ]


def dkim_dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    """dkimpy's ``dnsfunc``: the TXT record at ``name`` through our resolver."""
    found = txt_records(name.decode().rstrip("."))
    return found[0].encode() if found else None


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    return [
        ipaddress.ip_address(rdata.to_text())
        for rdtype in ("A", "AAAA")
        for rdata in _query(host, rdtype)
    ]


# --- keys and records -------------------------------------------------------


def key_pair_generate() -> tuple[str, str]:
    """A new RSA 2048 key: (private key PEM, public key as the DKIM p= value)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, base64.b64encode(public_der).decode()


def _selector_new(now: datetime, taken: str) -> str:
    selector = f"herald{now:%Y%m%d%H%M}"
    return selector if selector != taken else f"{selector}b"


@dataclass(frozen=True)
class DnsRecord:
    purpose: str
    type: str
    name: str
    value: str


def sending_hosts(domain: SenderDomain) -> list[str]:
    """The SMTP servers that relay mail sent from this domain."""
    hosts = (
        Dispatcher.objects.filter(
            from_email__iendswith=f"@{domain.domain}",
            delivery_mode=Dispatcher.DeliveryMode.SMTP,
            smtp_server__isnull=False,
        )
        .values_list("smtp_server__host", flat=True)
        .distinct()
    )
    return sorted({host.lower().rstrip(".") for host in hosts})


def _spf_term(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"a:{host}"
    return f"ip{address.version}:{address}"


def dmarc_report_email(domain: SenderDomain) -> str:
    return domain.dmarc_report_email or f"postmaster@{domain.domain}"


def sender_domain_records(*, domain: SenderDomain) -> list[DnsRecord]:
    """The exact records an administrator publishes for ``domain``."""
    terms = " ".join(_spf_term(host) for host in sending_hosts(domain))
    records = [
        DnsRecord("SPF", "TXT", domain.domain, f"v=spf1 {terms} ~all".replace("  ", " ")),
        DnsRecord(
            "DKIM",
            "TXT",
            f"{domain.dkim_selector}._domainkey.{domain.domain}",
            f"v=DKIM1; k=rsa; p={domain.dkim_public_key}",
        ),
    ]
    if domain.pending_selector:
        records.append(
            DnsRecord(
                "DKIM (new key, publish before it replaces the current one)",
                "TXT",
                f"{domain.pending_selector}._domainkey.{domain.domain}",
                f"v=DKIM1; k=rsa; p={domain.pending_public_key}",
            )
        )
    records.append(
        DnsRecord(
            "DMARC",
            "TXT",
            f"_dmarc.{domain.domain}",
            f"v=DMARC1; p=none; rua=mailto:{dmarc_report_email(domain)}",
        )
    )
    return_path = domain.return_path_domain or domain.domain
    mail_host = domain.return_path_host or "<the mail server of your bounce mailbox>"
    records.append(DnsRecord("Return path (bounces)", "MX", return_path, f"10 {mail_host}."))
    return records


# --- checks -----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    status: str
    reason: str = ""

    @classmethod
    def ok(cls) -> Check:
        return cls(Status.OK)

    @classmethod
    def failed(cls, reason: str) -> Check:
        return cls(Status.FAILED, reason)


def _spf_records(name: str) -> list[str]:
    return [
        r for r in txt_records(name) if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")
    ]


@dataclass
class _SpfWalk:
    """Counts the look-ups an SPF evaluation costs and gathers every
    network a plain (+) mechanism authorises, following include and
    redirect. A simplification of RFC 7208 that answers the questions we
    ask: is the record within the limit, and does it cover our hosts."""

    lookups: int = 0
    networks: list[IpNetwork] | None = None

    def walk(self, domain: str, record: str, depth: int = 0) -> None:
        if self.networks is None:
            self.networks = []
        for term in record.split()[1:]:
            qualifier = term[0] if term[0] in "+-~?" else "+"
            body = term.lstrip("+-~?")
            name, _, value = body.partition(":") if ":" in body else body.partition("=")
            name = name.split("/")[0].lower()
            if name in _LOOKUP_TERMS:
                self.lookups += 1
            if self.lookups > SPF_LOOKUP_LIMIT or depth > SPF_LOOKUP_LIMIT:
                return
            target = value.split("/")[0] or domain
            if name in ("include", "redirect") and value:
                inner = _spf_records(value)
                if len(inner) == 1:
                    self.walk(value, inner[0], depth + 1)
            elif qualifier != "+":
                continue
            elif name in ("ip4", "ip6"):
                try:
                    self.networks.append(ipaddress.ip_network(value, strict=False))
                except ValueError:
                    continue
            elif name == "a":
                self.networks += [ipaddress.ip_network(a) for a in _addresses(target)]
            elif name == "mx":
                for mx in _query(target, "MX"):
                    exchange = mx.exchange.to_text().rstrip(".")  # type: ignore[attr-defined]
                    self.networks += [ipaddress.ip_network(a) for a in _addresses(exchange)]

    def covers(self, host: str) -> bool:
        addresses = _addresses(host)
        return bool(addresses) and all(
            any(a in net for net in self.networks or []) for a in addresses
        )


def spf_check(*, domain: SenderDomain) -> Check:
    records = _spf_records(domain.domain)
    if not records:
        return Check.failed(
            f"No SPF record: publish a TXT record at {domain.domain} that starts with v=spf1."
        )
    if len(records) > 1:
        return Check.failed(
            f"{len(records)} SPF records found at {domain.domain}; publish exactly one "
            "(receivers treat several as an error)."
        )
    walk = _SpfWalk()
    walk.walk(domain.domain, records[0])
    if walk.lookups > SPF_LOOKUP_LIMIT:
        return Check.failed(
            f"The SPF record needs more than {SPF_LOOKUP_LIMIT} DNS look-ups "
            "(include, a, mx, ptr, exists, redirect); receivers reject it as an error."
        )
    missing = [host for host in sending_hosts(domain) if not walk.covers(host)]
    if missing:
        return Check.failed(
            "The SPF record does not include the sending hosts: " + ", ".join(missing) + "."
        )
    return Check.ok()


def _tags(record: str) -> dict[str, str] | None:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            return None
        tags[name.strip().lower()] = "".join(value.split())
    return tags


def dkim_check(*, domain: str, selector: str, public_key: str) -> Check:
    name = f"{selector}._domainkey.{domain}"
    records = txt_records(name)
    if not records:
        return Check.failed(f"No DKIM record at {name}.")
    tags = _tags(records[0]) or {}
    if tags.get("p") != public_key:
        return Check.failed(
            f"The DKIM key published at {name} does not match Herald's key for this selector."
        )
    return Check.ok()


def dmarc_check(*, domain: SenderDomain) -> Check:
    name = f"_dmarc.{domain.domain}"
    records = [r for r in txt_records(name) if r.upper().startswith("V=DMARC1")]
    if not records:
        return Check.failed(f"No DMARC record at {name}.")
    if len(records) > 1:
        return Check.failed(f"The DMARC record at {name} is malformed: there are {len(records)}.")
    tags = _tags(records[0])
    if tags is None or tags.get("v") != "DMARC1":
        return Check.failed(
            f"The DMARC record at {name} is malformed: it must be tag=value pairs "
            "separated by semicolons, starting with v=DMARC1."
        )
    if tags.get("p", "").lower() not in _DMARC_POLICIES:
        return Check.failed(
            f"The DMARC record at {name} is malformed: p= must be none, quarantine or reject."
        )
    return Check.ok()


def _guarded(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except DnsError as exc:
        return Check.failed(str(exc))


# --- services ---------------------------------------------------------------


def sender_domain_create(
    *,
    domain: str,
    dmarc_report_email: str = "",
    return_path_domain: str = "",
    return_path_host: str = "",
) -> SenderDomain:
    """A new sender domain with its first DKIM key; full_clean first, so
    bad input raises ValidationError and nothing is stored."""
    private_pem, public_key = key_pair_generate()
    sender = SenderDomain(
        domain=domain,
        dmarc_report_email=dmarc_report_email,
        return_path_domain=return_path_domain,
        return_path_host=return_path_host,
        dkim_selector=_selector_new(timezone.now(), ""),
        dkim_private_key=private_pem,
        dkim_public_key=public_key,
    )
    sender.full_clean()
    sender.save()
    return sender


def sender_domain_keys_fill(*, domain: SenderDomain) -> None:
    """Give an unsaved domain (from the admin form) its first key."""
    if not domain.dkim_public_key:
        private_pem, public_key = key_pair_generate()
        domain.dkim_selector = _selector_new(timezone.now(), "")
        domain.dkim_private_key = private_pem
        domain.dkim_public_key = public_key


def sender_domain_key_new(*, domain: SenderDomain) -> SenderDomain:
    """Make a pending selector and key. It signs nothing until its record
    verifies; then it replaces the current key (see sender_domain_verify)."""
    private_pem, public_key = key_pair_generate()
    domain.pending_selector = _selector_new(timezone.now(), domain.dkim_selector)
    domain.pending_private_key = private_pem  # type: ignore[assignment]
    domain.pending_public_key = public_key
    domain.pending_reason = "Not checked yet."
    domain.save(
        update_fields=[
            "pending_selector",
            "pending_private_key",
            "pending_public_key",
            "pending_reason",
        ]
    )
    return domain


def notification_key(domain: SenderDomain) -> str:
    return f"senderdomain:{domain.pk}"


def sender_domain_verify(*, domain: SenderDomain) -> bool:
    """Look up SPF, DKIM and DMARC, store each status with its reason,
    promote a pending key whose record verifies, and raise (or resolve)
    the notification of a domain that stopped (or resumed) verifying."""
    was_verified = domain.verified_at is not None
    spf = _guarded(lambda: spf_check(domain=domain))
    dkim = _guarded(
        lambda: dkim_check(
            domain=domain.domain, selector=domain.dkim_selector, public_key=domain.dkim_public_key
        )
    )
    dmarc = _guarded(lambda: dmarc_check(domain=domain))
    now = timezone.now()
    fields = ["spf_status", "spf_reason", "dkim_status", "dkim_reason"]
    fields += ["dmarc_status", "dmarc_reason", "checked_at"]
    domain.spf_status, domain.spf_reason = spf.status, spf.reason
    domain.dkim_status, domain.dkim_reason = dkim.status, dkim.reason
    domain.dmarc_status, domain.dmarc_reason = dmarc.status, dmarc.reason
    domain.checked_at = now
    if dkim.status == Status.OK and not domain.key_active:
        domain.key_active = True
        fields.append("key_active")
    if domain.pending_selector:
        fields += _pending_verify(domain)
    if domain.is_verified:
        domain.verified_at = now
        fields.append("verified_at")
    with transaction.atomic():
        domain.save(update_fields=fields)
        if domain.is_verified:
            notification_resolve(key=notification_key(domain))
        elif was_verified:
            notification_raise(
                key=notification_key(domain),
                title=f"Sender domain {domain.domain} no longer verifies",
                message=domain.problem,
            )
    return domain.is_verified


def _pending_verify(domain: SenderDomain) -> list[str]:
    pending = _guarded(
        lambda: dkim_check(
            domain=domain.domain,
            selector=domain.pending_selector,
            public_key=domain.pending_public_key,
        )
    )
    if pending.status != Status.OK:
        domain.pending_reason = pending.reason
        return ["pending_reason"]
    # The new record is live: it becomes the key, the old one is retired.
    domain.dkim_selector = domain.pending_selector
    domain.dkim_private_key = domain.pending_private_key  # type: ignore[assignment]
    domain.dkim_public_key = domain.pending_public_key
    domain.dkim_status, domain.dkim_reason = Status.OK, ""
    domain.key_active = True
    domain.pending_selector = domain.pending_public_key = domain.pending_reason = ""
    domain.pending_private_key = None
    return [
        "dkim_selector",
        "dkim_private_key",
        "dkim_public_key",
        "key_active",
        "pending_selector",
        "pending_private_key",
        "pending_public_key",
        "pending_reason",
    ]


def sender_domains_verify() -> int:
    """The verify-sender-domains job: every domain not archived."""
    count = 0
    for domain in SenderDomain.objects.filter(archived=False).order_by("pk"):
        sender_domain_verify(domain=domain)
        count += 1
    return count


def sender_domain_archive(*, domain: SenderDomain) -> bool:
    archived = SenderDomain.objects.filter(pk=domain.pk, archived=False).update(archived=True) == 1
    if archived:
        notification_resolve(key=notification_key(domain))
    return archived


def sender_domain_unarchive(*, domain: SenderDomain) -> bool:
    return SenderDomain.objects.filter(pk=domain.pk, archived=True).update(archived=False) == 1
