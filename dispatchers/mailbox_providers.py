"""Recipient domains grouped by the mailbox provider that hosts them.

Gmail and a company on Google Workspace share Google's limits, so the
group is found from the domain's MX host (aspmx.l.google.com: Google),
not from its name. The big consumer domains map without a look-up; any
other domain is looked up once and kept in MailDomain for a while. A
domain whose look-up fails, or whose MX belongs to nobody known, is a
group of its own: grouping never holds a message back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timedelta

import dns.exception
import dns.resolver
from django.conf import settings
from django.utils import timezone

from .models import MailboxProvider, MailDomain

GOOGLE, MICROSOFT, YAHOO, APPLE = (
    MailboxProvider.GOOGLE.value,
    MailboxProvider.MICROSOFT.value,
    MailboxProvider.YAHOO.value,
    MailboxProvider.APPLE.value,
)

# Consumer domains whose provider needs no look-up.
KNOWN_DOMAINS = {
    "gmail.com": GOOGLE,
    "googlemail.com": GOOGLE,
    "outlook.com": MICROSOFT,
    "live.com": MICROSOFT,
    "msn.com": MICROSOFT,
    "ymail.com": YAHOO,
    "aol.com": YAHOO,
    "icloud.com": APPLE,
    "me.com": APPLE,
    "mac.com": APPLE,
}
# hotmail.co.uk, yahoo.fr, ...: every country's variant.
KNOWN_PREFIXES = {"hotmail.": MICROSOFT, "yahoo.": YAHOO}

# MX host suffixes, as the providers publish them.
_MX_SUFFIXES = (
    ("google.com", GOOGLE),
    ("googlemail.com", GOOGLE),
    ("protection.outlook.com", MICROSOFT),
    ("outlook.com", MICROSOFT),
    ("hotmail.com", MICROSOFT),
    ("yahoodns.net", YAHOO),
    ("yahoo.com", YAHOO),
    ("mail.icloud.com", APPLE),
)

# Names that never have mail servers (RFC 2606, RFC 6761): no look-up.
_RESERVED = re.compile(r"(^|\.)(test|example|invalid|localhost|local)$|^example\.(com|net|org)$")

LOOKUP_THREADS = 16
FAILED_RETRY = timedelta(hours=1)  # a failed look-up is tried again after this


def known_provider(domain: str) -> str:
    """The provider of a well-known consumer domain, or ""."""
    if domain in KNOWN_DOMAINS:
        return KNOWN_DOMAINS[domain]
    return next((p for prefix, p in KNOWN_PREFIXES.items() if domain.startswith(prefix)), "")


def known_provider_sql(column: str) -> str:
    """``known_provider`` as an SQL expression over ``column`` (item
    generation groups a whole page in one statement). Built from the
    constant lists above only; ``%`` doubled for the driver's parameters."""
    whens = [f"WHEN {column} = '{d}' THEN '{p}'" for d, p in KNOWN_DOMAINS.items()]
    whens += [f"WHEN {column} LIKE '{prefix}%%' THEN '{p}'" for prefix, p in KNOWN_PREFIXES.items()]
    return f"CASE {' '.join(whens)} ELSE '' END"


def mx_provider(host: str) -> str:
    """The provider an MX host belongs to, or "" for anyone else."""
    host = host.rstrip(".").lower()
    return next(
        (p for suffix, p in _MX_SUFFIXES if host == suffix or host.endswith("." + suffix)), ""
    )


def group_of(domain: str, provider: str = "") -> str:
    """The throttling group: a provider's key, or the domain itself."""
    return provider or known_provider(domain) or domain


def _lookup(domain: str) -> tuple[str, str]:
    """(MX host, error) for one domain: the most preferred MX host."""
    from .domains import resolver  # domains imports the models

    try:
        answer = resolver().resolve(domain, "MX", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return "", "no MX record"
    except dns.exception.DNSException as exc:
        return "", f"look-up failed: {exc}"[:200]
    records = sorted(answer, key=lambda r: r.preference)  # type: ignore[attr-defined]
    return str(records[0].exchange).rstrip(".").lower(), ""  # type: ignore[attr-defined]


def needs_lookup(domain: str) -> bool:
    return bool(domain) and not known_provider(domain) and not _RESERVED.search(domain)


def mail_domains_resolve(
    *, domains: Iterable[str], now: datetime | None = None, budget_seconds: float = 10.0
) -> dict[str, str]:
    """Look up the domains not known yet (or known too long ago), keep
    what was found, and return each looked-up domain's provider ("" when
    none). Look-ups run in parallel, and stop being started after
    ``budget_seconds``: the rest stay their own group until next time."""
    now = now or timezone.now()
    wanted = {d for d in domains if needs_lookup(d)}
    if not wanted:
        return {}
    ttl = timedelta(hours=settings.HERALD_PROVIDER_MX_TTL_HOURS)
    fresh = MailDomain.objects.filter(domain__in=wanted, resolved_at__gt=now - ttl)
    for domain, error, resolved_at in fresh.values_list("domain", "error", "resolved_at"):
        if not error or resolved_at > now - FAILED_RETRY:
            wanted.discard(domain)
    found: dict[str, str] = {}
    deadline = time.monotonic() + budget_seconds
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="herald-mx") as pool:
        futures = {}
        for domain in sorted(wanted):
            if time.monotonic() > deadline:
                break
            futures[pool.submit(_lookup, domain)] = domain
        for future in as_completed(futures):
            domain = futures[future]
            host, error = future.result()
            provider = mx_provider(host)
            MailDomain.objects.update_or_create(
                domain=domain,
                defaults={
                    "provider": provider,
                    "mx_host": host,
                    "error": error,
                    "resolved_at": now,
                },
            )
            found[domain] = provider
    return found
