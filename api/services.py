"""API tokens, and the writes the API offers beyond plain model CRUD."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from campaigns.imports import RowRejected, contact_row_clean, contacts_write
from campaigns.models import Contact, ContactList, Subscription
from campaigns.preferences import subscriptions_leave, subscriptions_rejoin

from .models import ApiToken

PREFIX_LENGTH = 8
BULK_MAX_ROWS = 10_000


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A new token and its raw value, which is never stored: the caller
    shows it once."""
    raw = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=raw[:PREFIX_LENGTH], key_hash=token_hash(raw)
    )
    return token, raw


def token_revoke(*, token: ApiToken) -> bool:
    return (
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        == 1
    )


def token_authenticate(*, raw: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=token_hash(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    # At most one write a minute per token: the admin shows "last used",
    # and a busy script should not rewrite the row on every request.
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- contacts ----------------------------------------------------------------


@dataclass
class RowResult:
    index: int
    status: str
    errors: list[str] = field(default_factory=list)


_TEXT_FIELDS = ("email", "phone", "first_name", "last_name", "language", "time_zone")


def _row_values(row: Any) -> tuple[dict[str, str], dict[str, Any]]:
    if not isinstance(row, dict):
        raise RowRejected("a row must be an object")
    unknown = set(row) - {*_TEXT_FIELDS, "attributes"}
    if unknown:
        raise RowRejected(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    values: dict[str, str] = {}
    for name in _TEXT_FIELDS:
        value = row.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise RowRejected(f"{name} must be a string")
        if "\x00" in value:
            raise RowRejected(f"{name} contains a NUL character")
        values[name] = value.strip()
    attributes = row.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise RowRejected("attributes must be an object")
    if "\\u0000" in json.dumps(attributes):
        raise RowRejected("attributes contain a NUL character")
    return values, attributes


def contacts_upsert(
    *, rows: list[Any], contact_list: ContactList | None, source: str
) -> tuple[list[RowResult], int]:
    """Create or update contacts by address, checked by the rules of the CSV
    import and written by its set-based upsert; one result per row, in
    order. A blank field leaves what is stored; attributes are merged.
    Also returns how many had unsubscribed from the list: not re-added."""
    results: list[RowResult] = []
    good: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for index, row in enumerate(rows):
        try:
            values, attributes = _row_values(row)
            cleaned = contact_row_clean(values, {})
        except RowRejected as exc:
            results.append(RowResult(index, "rejected", [str(exc)]))
            continue
        cleaned["attributes"] = attributes
        if cleaned["key"] in first_index:
            # One statement cannot upsert the same address twice.
            reason = f"duplicate of row {first_index[cleaned['key']]}"
            results.append(RowResult(index, "rejected", [reason]))
            continue
        first_index[cleaned["key"]] = index
        good.append(cleaned)
        results.append(RowResult(index, "pending"))
    emails = [r["key"] for r in good]
    with transaction.atomic():
        existing = set(Contact.objects.filter(email__in=emails).values_list("email", flat=True))
        kept_unsubscribed = 0
        if good:
            with connection.cursor() as cursor:
                *_, kept_unsubscribed = contacts_write(
                    cursor=cursor,
                    rows=good,
                    source=source,
                    contact_list_id=contact_list.pk if contact_list else None,
                )
    by_index = {first_index[e]: e for e in emails}
    for result in results:
        if result.status == "pending":
            result.status = "updated" if by_index[result.index] in existing else "created"
    return results, kept_unsubscribed


def contact_subscribe(
    *, contact: Contact, lists: Iterable[ContactList], source: str, resubscribe: bool = False
) -> list[ContactList]:
    """Subscribe to each list; returns the lists it was not already on.

    A contact who left one of the lists is put back only when the caller
    says they consented again (``resubscribe``), recorded with ``source``;
    otherwise nothing changes and the refusal names the lists."""
    lists = list(lists)
    left = Subscription.objects.filter(
        contact=contact, contact_list__in=lists, unsubscribed_at__isnull=False
    ).select_related("contact_list")
    if left and not resubscribe:
        names = "; ".join(
            f"{row.contact_list} on {row.unsubscribed_at:%Y-%m-%d} "
            f"({row.get_unsubscribed_via_display() or 'unknown'})"
            for row in left
        )
        raise ValidationError(
            f"{contact.email} unsubscribed from {names}. Herald does not put them back "
            'without new consent: if they gave it, send "resubscribe": true.',
            code="unsubscribed",
        )
    added = []
    rejoining = {row.contact_list_id for row in left}
    with transaction.atomic():
        subscriptions_rejoin(contact=contact, list_ids=sorted(rejoining), source=source)
        for contact_list in lists:
            _, created = Subscription.objects.get_or_create(
                contact=contact, contact_list=contact_list, defaults={"source": source}
            )
            if created or contact_list.pk in rejoining:
                added.append(contact_list)
    return added


def contact_lists_leave(*, contact: Contact, lists: Iterable[ContactList]) -> list[str]:
    """Unsubscribe from the lists, keeping the record of it."""
    return subscriptions_leave(
        contact=contact, list_ids=[cl.pk for cl in lists], via=Subscription.Via.API
    )
