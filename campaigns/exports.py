"""CSV exports of contacts and suppressions, streamed a page at a time.

Every cell that a spreadsheet would read as a formula (it starts with = + -
@, a tab or a carriage return) gets a leading single quote, so an address
or a name typed by a stranger cannot run in a marketer's spreadsheet. Our
import strips that quote again, so an export imports back unchanged."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from .models import Contact, Suppression

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PAGE_ROWS = 2000

CONTACT_COLUMNS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "language",
    "time_zone",
    "status",
    "source",
    "created_at",
)
SUPPRESSION_COLUMNS = ("pattern", "reason", "source", "created_at")


def csv_safe(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


class _Echo:
    """A file whose write() hands back what it was given, for csv.writer."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow([csv_safe(v) for v in row])


def contact_attribute_names(*, contacts: QuerySet[Contact]) -> list[str]:
    """Every custom attribute key in use, one column each in the export."""
    if connection.vendor != "postgresql":
        keys: set[str] = set()
        for attributes in contacts.values_list("attributes", flat=True).iterator():
            keys.update(attributes or {})
        return sorted(keys)
    sql, params = contacts.values("attributes").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT jsonb_object_keys(attributes) AS k FROM ({sql}) AS c ORDER BY k",
            params,
        )
        return [key for (key,) in cursor.fetchall()]


def contacts_export_rows(*, contacts: QuerySet[Contact]) -> Iterator[list[Any]]:
    """The header and one row per contact; attributes after the fixed columns."""
    attributes = contact_attribute_names(contacts=contacts)
    yield [*CONTACT_COLUMNS, *(f"attribute_{k}" if k in CONTACT_COLUMNS else k for k in attributes)]
    rows = contacts.order_by("id").values_list(*CONTACT_COLUMNS, "attributes")
    for row in rows.iterator(chunk_size=PAGE_ROWS):
        *fixed, attrs = row
        fixed[-1] = fixed[-1].isoformat()
        yield [*fixed, *(attrs.get(k) for k in attributes)]


def suppressions_export_rows(*, suppressions: QuerySet[Suppression]) -> Iterator[list[Any]]:
    yield list(SUPPRESSION_COLUMNS)
    rows = suppressions.order_by("id").values_list(*SUPPRESSION_COLUMNS)
    for *fixed, created_at in rows.iterator(chunk_size=PAGE_ROWS):
        yield [*fixed, created_at.isoformat()]
