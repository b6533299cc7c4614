"""What the troubleshooting endpoint shows support staff: aggregated
sending indicators (counts, rates, error classes, job health) and nothing
personal. Server replies and errors are quoted only after scrubbing: every
address-like string goes, and so do the address, local part and names of
the contact the reply was about."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import CharField, Count, F, Func, Max, Value
from django.utils import timezone

from .models import Job, Notification
from .selectors import dispatchers_panel, jobs_summary, live_campaign_ids, messages_totals

ADDRESS = re.compile(r"<?[^\s<>()\[\]{}\"',;:@]+@[^\s<>()\[\]{}\"',;:@]+>?")
REDACTED = "<redacted>"
# RFC 3463: the subject of an enhanced status code (the middle number).
SUBJECTS = {
    "0": "other or undefined status",
    "1": "addressing status",
    "2": "mailbox status",
    "3": "mail system status",
    "4": "network and routing status",
    "5": "mail delivery protocol status",
    "6": "message content or media status",
    "7": "security or policy status",
}
ENHANCED = r"([245]\.[0-9]{1,3}\.[0-9]{1,3})"
QUOTE_LENGTH = 300


def scrub(text: str, *, known: Iterable[str] = ()) -> str:
    """``text`` without anything that looks like an address, nor any of
    the ``known`` personal values (case-insensitive), shortened."""
    text = ADDRESS.sub(REDACTED, text or "")
    for value in sorted({k.strip() for k in known if k and len(k.strip()) >= 3}, key=len)[::-1]:
        text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
    return text[:QUOTE_LENGTH]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def error_classes() -> list[dict[str, Any]]:
    """Failed and deferred items of unfinished campaigns grouped by outcome,
    SMTP code and enhanced status code, with the newest reply of each class.
    Completed campaigns keep only frozen counters; their rows are not read."""
    from campaigns.models import CampaignItem

    S = CampaignItem.Status
    groups = list(
        CampaignItem.objects.filter(
            campaign_id__in=live_campaign_ids(), status__in=[S.FAILED, S.DEFERRED]
        )
        .annotate(
            enhanced=Func(
                F("smtp_response"), Value(ENHANCED), function="substring", output_field=CharField()
            )
        )
        .values("status", "smtp_code", "enhanced", "campaign__dispatcher__name")
        .annotate(n=Count("id"), last_id=Max("id"))
        .order_by()
    )
    last = {
        item.pk: item
        for item in CampaignItem.objects.filter(pk__in=[g["last_id"] for g in groups])
        .select_related("contact")
        .only("smtp_response", "contact__email", "contact__first_name", "contact__last_name")
    }
    classes = []
    for group in sorted(groups, key=lambda g: -g["n"]):
        item = last.get(group["last_id"])
        if item is None:
            continue  # its campaign was deleted between the two reads
        contact = item.contact
        known = [contact.email, contact.email.partition("@")[0], contact.first_name]
        known += [contact.last_name, f"{contact.first_name} {contact.last_name}"]
        enhanced = group["enhanced"] or ""
        classes.append(
            {
                "outcome": group["status"],
                "dispatcher": group["campaign__dispatcher__name"],
                "smtp_code": group["smtp_code"],
                "enhanced_code": enhanced or None,
                "class": _describe_class(group["smtp_code"], enhanced),
                "count": group["n"],
                "last_error": scrub(item.smtp_response, known=known),
            }
        )
    return classes


def _describe_class(code: int | None, enhanced: str) -> str:
    if code is None:
        return "no SMTP reply (the message could not be built or sent)"
    kind = {"2": "accepted", "4": "transient", "5": "permanent"}.get(str(code)[0], "unknown")
    if enhanced:
        return f"{kind}: {SUBJECTS.get(enhanced.split('.')[1], 'unknown status')}"
    return kind


def support_indicators() -> dict[str, Any]:
    from smtpservers.models import SmtpServer

    totals = messages_totals()
    messages: dict[str, dict[str, int]] = defaultdict(dict)
    for (dispatcher, outcome), n in totals.items():
        messages[dispatcher][outcome] = n
    dispatchers = []
    for panel in dispatchers_panel():
        d: Any = panel.dispatcher
        dispatchers.append(
            {
                "name": d.name,
                "type": d.type,
                "delivery_mode": d.delivery_mode,
                "enabled": d.is_enabled,
                "paused_reason": scrub(d.paused_reason),
                "hourly_limit": panel.limit,
                "sent_last_hour": panel.used_last_hour,
                "rate_per_minute": panel.rate_per_minute,
                "backlog": panel.backlog,
                "deferred": panel.deferred,
                "batches_in_flight": panel.batches_in_flight,
                "consecutive_failures": d.consecutive_failures,
                "last_error": scrub(d.last_error),
                "messages": messages.get(d.name, {}),
            }
        )
    servers = [
        {
            "name": s.name,
            "security": s.security,
            "auth_method": s.auth_method,
            "active": s.is_active,
            "connection_ok": s.connection_ok,
            "connection_status": scrub(s.connection_status),
            "checked_at": _iso(s.connection_checked_at),
        }
        for s in SmtpServer.objects.order_by("name")
    ]
    jobs = []
    for summary in jobs_summary():
        last = summary.last
        health = summary.health
        jobs.append(
            {
                "job": Job(summary.job).name.lower(),
                "label": summary.label,
                "schedule": summary.schedule,
                "enabled": summary.enabled,
                "last_started_at": _iso(last.started_at) if last else None,
                "last_outcome": last.outcome if last else None,
                "last_duration_seconds": last.duration if last else None,
                "last_items_processed": last.items_processed if last else None,
                "last_error": scrub(last.error) if last else "",
                "median_duration_seconds": health.median if health else None,
                "failures_24h": summary.failures_24h,
                "consecutive_failures": health.failures if health else 0,
                "flags": health.flags if health else [],
            }
        )
    return {
        "generated_at": timezone.now().isoformat(),
        "messages_by_dispatcher": dict(messages),
        "dispatchers": dispatchers,
        "smtp_servers": servers,
        "error_classes": error_classes(),
        "jobs": jobs,
        "open_notifications": Notification.objects.filter(resolved_at__isnull=True).count(),
    }
