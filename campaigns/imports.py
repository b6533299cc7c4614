"""CSV import of contacts and suppressions, streamed from a file on disk.

The upload is written to settings.VAR_DIR / "imports" as it arrives and is
never held in memory whole. The import reads it a chunk of rows at a time
and checks each row, in a thread of its own one chunk ahead; the good rows
are copied (COPY) into a staging table and written with one set-based
statement (INSERT ... ON CONFLICT DO UPDATE, and the list's subscriptions),
one transaction per chunk, so re-importing a file changes nothing that is
already so. Every rejected row goes to a report CSV with its row number and
reason.

Row numbers are spreadsheet rows: the header is row 1, the first data row
is row 2, and a quoted cell spanning several lines is still one row."""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import io
import json
import re
import sys
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from queue import Full, Queue
from typing import Any, BinaryIO, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from email_validator import EmailNotValidError, validate_email

from smtpservers.validators import validate_header_value

from .exports import csv_safe
from .models import Contact, ContactList, ImportJob, Suppression

CHUNK_ROWS = 20_000
MAX_COLUMNS = 200
# A running import whose heartbeat is older than this belongs to a dead
# worker; a redelivered task may take it over and start again.
STALE_AFTER = timedelta(minutes=10)

ContactFields = (
    ("email", "Email"),
    ("phone", "Phone"),
    ("first_name", "First name"),
    ("last_name", "Last name"),
    ("language", "Language"),
    ("time_zone", "Time zone"),
    ("attribute", "Custom attribute (named)"),
    ("ignore", "Ignore"),
)
SuppressionFields = (
    ("pattern", "Address or *@domain"),
    ("reason", "Reason"),
    ("ignore", "Ignore"),
)

_PHONE_SEPARATORS = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}\Z")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*\Z")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})\Z")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+\Z")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_TIME_ZONES = frozenset(zoneinfo.available_timezones())


T = TypeVar("T")


class RowRejected(Exception):
    """A row that is not imported; the message is the reason in the report."""


def import_dir() -> Path:
    path = Path(settings.VAR_DIR) / "imports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_path(job: ImportJob) -> Path:
    return import_dir() / job.file_name


def report_path(job: ImportJob) -> Path:
    return import_dir() / f"{Path(job.file_name).stem}.rejected.csv"


# --- Upload and mapping -------------------------------------------------------


def import_upload(*, kind: str, uploaded: UploadedFile, user: Any) -> ImportJob:
    """Store an uploaded CSV on disk, check it is UTF-8 and read its header."""
    name = f"{uuid.uuid4().hex}.csv"
    path = import_dir() / name
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    try:
        with path.open("wb") as out:
            for chunk in uploaded.chunks():
                _decode_or_reject(decoder, chunk, size)
                size += len(chunk)
                out.write(chunk)
            _decode_or_reject(decoder, b"", size, final=True)
        delimiter, headers = _read_header(path)
    except ValidationError:
        path.unlink(missing_ok=True)
        raise
    return ImportJob.objects.create(
        kind=kind,
        original_name=Path(uploaded.name or "upload.csv").name[:255],
        file_name=name,
        size_bytes=size,
        delimiter=delimiter,
        headers=headers,
        created_by=user if getattr(user, "pk", None) else None,
    )


def _decode_or_reject(decoder: Any, chunk: bytes, offset: int, final: bool = False) -> None:
    try:
        decoder.decode(chunk, final=final)
    except UnicodeDecodeError as exc:
        raise ValidationError(
            "The file is not UTF-8 text (bad byte at position %(pos)s). "
            "Save it as “CSV UTF-8” and upload it again.",
            code="encoding",
            params={"pos": offset + exc.start},
        ) from None


def _read_header(path: Path) -> tuple[str, list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as text:
        sample = text.read(64 * 1024)
        try:
            delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
        text.seek(0)
        try:
            header = next(csv.reader(text, delimiter=delimiter), [])
        except csv.Error as exc:
            raise ValidationError(
                "The first row could not be read as CSV: %(error)s.",
                code="csv",
                params={"error": exc},
            ) from None
    headers = [h.strip() for h in header]
    if not any(headers):
        raise ValidationError(
            "The file is empty or its first row has no column names. "
            "The first row must name the columns (e.g. email, first_name).",
            code="no_header",
        )
    if len(headers) > MAX_COLUMNS:
        raise ValidationError(
            "The file has %(n)s columns; at most %(max)s are supported.",
            code="too_many_columns",
            params={"n": len(headers), "max": MAX_COLUMNS},
        )
    return delimiter, [h or f"Column {i + 1}" for i, h in enumerate(headers)]


def import_preview(*, job: ImportJob, rows: int = 3) -> list[list[str]]:
    """The first few data rows, for the mapping page."""
    sample = []
    for _, cells in _records(source_path(job), job.delimiter):
        sample.append(cells)
        if len(sample) == rows:
            break
    return sample


def import_fields(kind: str) -> tuple[tuple[str, str], ...]:
    return ContactFields if kind == ImportJob.Kind.CONTACTS else SuppressionFields


def attribute_name_guess(header: str) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", header.strip().lower()).strip("_")[:64]
    return name if name and not name[0].isdigit() else f"attr_{name}"[:64]


_GUESSES = {
    "email": "email",
    "e_mail": "email",
    "email_address": "email",
    "phone": "phone",
    "mobile": "phone",
    "phone_number": "phone",
    "first_name": "first_name",
    "firstname": "first_name",
    "given_name": "first_name",
    "last_name": "last_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family_name": "last_name",
    "language": "language",
    "lang": "language",
    "time_zone": "time_zone",
    "timezone": "time_zone",
    "tz": "time_zone",
    "pattern": "pattern",
    "address": "pattern",
    "domain": "pattern",
    "reason": "reason",
}
# Columns our own exports and reports carry that are not worth importing.
_IGNORED = {"row", "status", "source", "created_at", "updated_at", "lists"}


def import_mapping_guess(*, job: ImportJob) -> list[dict[str, str]]:
    """A first mapping from the header names; the marketer corrects it."""
    known = {key for key, _ in import_fields(job.kind)}
    mapping = []
    taken: set[str] = set()
    for header in job.headers:
        slug = attribute_name_guess(header)
        guess = _GUESSES.get(slug, "")
        if job.kind == ImportJob.Kind.SUPPRESSIONS and guess == "email":
            guess = "pattern"
        if guess in known and guess not in taken:
            taken.add(guess)
            mapping.append({"field": guess, "name": ""})
        elif job.kind == ImportJob.Kind.CONTACTS and slug not in _IGNORED and slug != "reason":
            mapping.append({"field": "attribute", "name": slug})
        else:
            mapping.append({"field": "ignore", "name": ""})
    return mapping


def import_mapping_check(*, kind: str, mapping: list[dict[str, str]]) -> list[dict[str, str]]:
    """Validate a column mapping; return it normalised."""
    known = {key for key, _ in import_fields(kind)}
    required = "email" if kind == ImportJob.Kind.CONTACTS else "pattern"
    errors = []
    seen_fields: set[str] = set()
    seen_names: set[str] = set()
    clean = []
    for column in mapping:
        chosen = column.get("field", "ignore")
        name = column.get("name", "").strip()
        if chosen not in known:
            errors.append(f"Unknown field {chosen!r}.")
            continue
        if chosen == "attribute":
            if not _ATTRIBUTE_NAME.match(name):
                errors.append(
                    f"Custom attribute name {name!r}: use letters, digits and underscores, "
                    "starting with a letter."
                )
            elif name.lower() in seen_names:
                errors.append(f"Custom attribute {name!r} is mapped twice.")
            seen_names.add(name.lower())
            clean.append({"field": chosen, "name": name})
            continue
        if chosen != "ignore":
            if chosen in seen_fields:
                label = dict(import_fields(kind))[chosen]
                errors.append(f"{label} is mapped to more than one column.")
            seen_fields.add(chosen)
        clean.append({"field": chosen, "name": ""})
    if required not in seen_fields:
        label = dict(import_fields(kind))[required]
        errors.append(f"Choose the column that holds the {label.lower()}.")
    if errors:
        raise ValidationError(errors, code="mapping")
    return clean


def import_start(
    *,
    job: ImportJob,
    mapping: list[dict[str, str]],
    contact_list: ContactList | None = None,
    source: str = "",
) -> ImportJob:
    """Save the mapping and queue the import (once, whoever clicks twice)."""
    mapping = import_mapping_check(kind=job.kind, mapping=mapping)
    if len(mapping) != len(job.headers):
        raise ValidationError("The mapping must name one field per column.", code="mapping")
    default_source = f"CSV import: {job.original_name}"
    fields = {
        "status": ImportJob.Status.QUEUED,
        "mapping": mapping,
        "contact_list": contact_list if job.kind == ImportJob.Kind.CONTACTS else None,
        "source": (source.strip() or default_source)[:100],
    }
    with transaction.atomic():
        claimed = ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.UPLOADED).update(
            **fields
        )
        if claimed != 1:
            raise ValidationError("This import has already been started.", code="started")
        from .import_tasks import import_run as task

        transaction.on_commit(lambda: task.delay(job.pk))
    job.refresh_from_db()
    return job


# --- Reading ------------------------------------------------------------------


@dataclass
class _Reader:
    """Data records of a CSV file with their row numbers, and how far in it is."""

    path: Path
    delimiter: str
    _file: BinaryIO | None = None
    _size: int = 0

    @property
    def position(self) -> int:
        # Asked once a chunk, not once a row: a tell() per row costs more
        # than parsing it.
        if self._file is None or self._file.closed:
            return self._size
        return self._file.tell()

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        with self.path.open("rb") as raw:
            self._file = raw
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.reader(text, delimiter=self.delimiter)
            row = 1
            try:
                next(reader)
                for cells in reader:
                    row += 1
                    yield row, cells
            except csv.Error as exc:
                raise _FileBroken(f"Row {row + 1} could not be read as CSV: {exc}.") from None
            self._size = raw.tell()


_FORMULA_STARTS = frozenset("=+-@\t\r")


class _FileBroken(Exception):
    pass


def _records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    yield from _Reader(path, delimiter)


def _unescape(cell: str) -> str:
    # Undo the quote our exports put before a cell that looks like a formula,
    # so an exported file imports back unchanged.
    if cell[1:2] in _FORMULA_STARTS and cell[:1] == "'":
        return cell[1:]
    return cell


# The cell index of a field no column holds: beyond the end of any row.
_ABSENT = sys.maxsize


@dataclass(frozen=True)
class _Plan:
    """Where each of a kind's fields sits in a row, worked out once from the
    mapping rather than for every row."""

    width: int
    fields: tuple[int, ...]  # a cell index per field of the kind, in its order
    attributes: tuple[tuple[int, str], ...]  # (cell index, attribute name)


def _plan(mapping: list[dict[str, str]], fields: tuple[str, ...]) -> _Plan:
    where = {column["field"]: i for i, column in enumerate(mapping)}
    return _Plan(
        width=len(mapping),
        fields=tuple(where.get(name, _ABSENT) for name in fields),
        attributes=tuple(
            (i, column["name"])
            for i, column in enumerate(mapping)
            if column["field"] == "attribute"
        ),
    )


def _cells(plan: _Plan, cells: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The row's field values (in the kind's order, "" when absent) and its
    non-empty custom attributes."""
    count = len(cells)
    if count > plan.width and any(c.strip() for c in cells[plan.width :]):
        raise RowRejected(f"the row has more columns than the header ({count} > {plan.width})")
    values = [_unescape(cells[i].strip()) if i < count else "" for i in plan.fields]
    attributes = [
        (name, value)
        for i, name in plan.attributes
        if i < count and (value := _unescape(cells[i].strip()))
    ]
    return values, attributes


# --- Checking rows ------------------------------------------------------------

# RFC 5322 atext, exactly email-validator's DOT_ATOM_TEXT: an ASCII local part
# that matches it is one email-validator accepts and keeps as it is.
_ATEXT = r"a-zA-Z0-9_!#\$%&'\*\+\-/=\?\^`\{\|\}~"
_DOT_ATOM = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*\\Z")
_EMAIL_MAX_BYTES = 254


@functools.lru_cache(maxsize=4096)
def _domain_checked(domain: str) -> tuple[str, int] | None:
    """email-validator's verdict on a domain: its normalised form and the
    length in bytes of its longest form (IDNA or Unicode), or None if refused.
    A file has far fewer domains than rows, so each is checked once."""
    try:
        result = validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return result.domain, max(len(result.domain.encode()), len(result.ascii_domain))


def normalise_email(value: str) -> str:
    if not value:
        raise RowRejected("missing required field: email")
    # The common case without the full parse: an ASCII dot-atom before the
    # @-sign and a domain email-validator accepted before. Whatever is not
    # plainly so (quotes, Unicode, display names, a refused domain, the
    # length limit) goes through email-validator itself, which also words
    # the reason.
    local, at, domain = value.partition("@")
    if at and value.isascii() and len(value) <= _EMAIL_MAX_BYTES and _DOT_ATOM.match(local):
        checked = _domain_checked(domain)
        if checked is not None and len(local) + 1 + checked[1] <= _EMAIL_MAX_BYTES:
            return f"{local}@{checked[0]}".lower()
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise RowRejected(f"invalid address: {exc}") from None
    return result.normalized.lower()


def normalise_phone(value: str) -> str:
    if not value:
        return ""
    digits = _PHONE_SEPARATORS.sub("", value)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if not _E164.match(digits):
        raise RowRejected(
            f"invalid phone: {value!r} is not an international number (e.g. +44 20 7946 0958)"
        )
    return digits


def attribute_value(text: str) -> Any:
    """Type a custom attribute: int, float, bool, else string (ISO dates stay
    strings in the JSON, checked, so they sort and compare as dates)."""
    # A column holds the same few short values over and over (plans, dates,
    # yes/no): each is typed once. Long texts are not kept.
    return _short_attribute_value(text) if len(text) <= 32 else _attribute_value(text)


def _attribute_value(text: str) -> Any:
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _ISO_DATE.match(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            return text
    return text


_short_attribute_value = functools.lru_cache(maxsize=4096)(_attribute_value)


def _name(value: str, label: str) -> str:
    try:
        validate_header_value(value)
    except ValidationError:
        raise RowRejected(f"header-injection characters in {label}") from None
    if len(value) > 100:
        raise RowRejected(f"{label} is longer than 100 characters")
    return value


CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "language", "time_zone")


def contact_fields_clean(
    email: str, phone: str, first_name: str, last_name: str, language: str, time_zone: str
) -> tuple[str, str, str, str, str, str]:
    """Check one contact's fields (CONTACT_FIELDS' order), the first failed
    check giving the reason; returns them as stored, the address normalised."""
    if language and (len(language) > 16 or not _LANGUAGE.match(language)):
        raise RowRejected(f"invalid language: {language!r} (use a code such as en or pt-BR)")
    if time_zone and time_zone not in _TIME_ZONES:
        raise RowRejected(f"invalid time zone: {time_zone!r} (use a name such as Europe/Paris)")
    return (
        normalise_email(email),
        normalise_phone(phone),
        _name(first_name, "first name"),
        _name(last_name, "last name"),
        language,
        time_zone,
    )


def contact_row_clean(values: dict[str, str], attributes: dict[str, str]) -> dict[str, Any]:
    key, phone, first_name, last_name, language, time_zone = contact_fields_clean(
        *(values.get(name, "") for name in CONTACT_FIELDS)
    )
    return {
        "key": key,
        "phone": phone,
        "first_name": first_name,
        "last_name": last_name,
        "language": language,
        "time_zone": time_zone,
        "attributes": {k: attribute_value(v) for k, v in attributes.items()},
    }


SUPPRESSION_FIELDS = ("pattern", "reason")


def suppression_fields_clean(pattern: str, reason: str) -> tuple[str, str]:
    if not pattern:
        raise RowRejected("missing required field: address or *@domain")
    if pattern.startswith("*@"):
        try:
            domain = validate_email(f"x@{pattern[2:]}", check_deliverability=False).domain
        except EmailNotValidError as exc:
            raise RowRejected(f"invalid domain: {exc}") from None
        key = f"*@{domain.lower()}"
    elif "@" not in pattern and "." in pattern:
        raise RowRejected(f"invalid address: to suppress a whole domain write *@{pattern}")
    else:
        key = normalise_email(pattern)
    if len(reason) > 255:
        raise RowRejected("reason is longer than 255 characters")
    if "\x00" in reason:
        raise RowRejected("NUL character in reason")
    return key, reason


def suppression_row_clean(values: dict[str, str], attributes: dict[str, str]) -> dict[str, Any]:
    key, reason = suppression_fields_clean(*(values.get(name, "") for name in SUPPRESSION_FIELDS))
    return {"key": key, "reason": reason}


def _contact_record(row: int, values: list[str], attributes: list[tuple[str, str]]) -> tuple:
    fields = contact_fields_clean(*values)
    encoded = json.dumps({name: attribute_value(text) for name, text in attributes})
    if "\\u0000" in encoded:  # PostgreSQL can store no NUL character
        for name, text in attributes:
            if "\x00" in text:
                raise RowRejected(f"NUL character in custom attribute {name}")
    return (row, *fields, encoded)


def _suppression_record(row: int, values: list[str], attributes: list[tuple[str, str]]) -> tuple:
    return (row, *suppression_fields_clean(*values))


# --- Writing chunks -----------------------------------------------------------

# Good rows are copied (COPY, the fastest way in) into a staging table of the
# session, then written with one set-based statement per table. The staging
# table is emptied before each use, so a savepoint or a failed chunk never
# leaves rows for the next one.
_CONTACT_STAGE = "herald_contact_stage"
_CONTACT_STAGE_COLUMNS = """
    row integer, email text, phone text, first_name text, last_name text,
    language text, time_zone text, attributes jsonb
"""

_CONTACTS_UPSERT = f"""
INSERT INTO campaigns_contact AS c (
    email, phone, first_name, last_name, language, time_zone, attributes,
    status, source, created_at, updated_at
)
SELECT email, phone, first_name, last_name, language, time_zone, attributes,
    %(status)s, %(source)s, now(), now()
FROM {_CONTACT_STAGE}
ON CONFLICT (email) DO UPDATE SET
    phone = COALESCE(NULLIF(EXCLUDED.phone, ''), c.phone),
    first_name = COALESCE(NULLIF(EXCLUDED.first_name, ''), c.first_name),
    last_name = COALESCE(NULLIF(EXCLUDED.last_name, ''), c.last_name),
    language = COALESCE(NULLIF(EXCLUDED.language, ''), c.language),
    time_zone = COALESCE(NULLIF(EXCLUDED.time_zone, ''), c.time_zone),
    attributes = c.attributes || EXCLUDED.attributes,
    updated_at = now()
WHERE c.phone IS DISTINCT FROM COALESCE(NULLIF(EXCLUDED.phone, ''), c.phone)
   OR c.first_name IS DISTINCT FROM COALESCE(NULLIF(EXCLUDED.first_name, ''), c.first_name)
   OR c.last_name IS DISTINCT FROM COALESCE(NULLIF(EXCLUDED.last_name, ''), c.last_name)
   OR c.language IS DISTINCT FROM COALESCE(NULLIF(EXCLUDED.language, ''), c.language)
   OR c.time_zone IS DISTINCT FROM COALESCE(NULLIF(EXCLUDED.time_zone, ''), c.time_zone)
   OR NOT c.attributes @> EXCLUDED.attributes
RETURNING c.id, c.email, xmax = 0 AS created
"""

_CONTACTS_WRITE = f"""
WITH written AS ({_CONTACTS_UPSERT})
SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created), 0 FROM written
"""

# The same, and every staged contact subscribed to the list. Those the upsert
# wrote come back with their id; only those it left unchanged are looked up.
# A contact who left the list keeps their row, marked unsubscribed: the
# conflict leaves it as it is (no import re-subscribes anybody), and the
# statement counts them for the report (a contact created just now cannot
# be one). The lookups are correlated subqueries so that each is one index
# probe: a join would let the planner, whose statistics lag behind a growing
# table, scan every contact and every subscription of the list per chunk.
_CONTACTS_WRITE_SUBSCRIBE = f"""
WITH written AS ({_CONTACTS_UPSERT}),
named AS MATERIALIZED (
    SELECT id, created FROM written
    UNION ALL
    SELECT (SELECT c.id FROM campaigns_contact c WHERE c.email = st.email), false
    FROM {_CONTACT_STAGE} st WHERE NOT EXISTS (SELECT FROM written WHERE email = st.email)
),
added AS (
    INSERT INTO campaigns_subscription (contact_id, contact_list_id, created_at, source)
    SELECT id, %(list)s, now(), %(source)s FROM named
    ON CONFLICT (contact_list_id, contact_id) DO NOTHING
)
SELECT
    (SELECT count(*) FROM written WHERE created),
    (SELECT count(*) FROM written WHERE NOT created),
    (SELECT count(*) FROM named WHERE NOT created AND (
        SELECT s.unsubscribed_at FROM campaigns_subscription s
        WHERE s.contact_list_id = %(list)s AND s.contact_id = named.id
    ) IS NOT NULL)
"""

_SUPPRESSION_STAGE = "herald_suppression_stage"
_SUPPRESSION_STAGE_COLUMNS = "row integer, pattern text, reason text"

_SUPPRESSIONS_UPSERT = f"""
WITH written AS (
    INSERT INTO campaigns_suppression AS s (pattern, reason, source, created_at)
    SELECT pattern, reason, %(source)s, now() FROM {_SUPPRESSION_STAGE}
    ON CONFLICT (pattern) DO UPDATE SET reason = EXCLUDED.reason
    WHERE EXCLUDED.reason <> '' AND s.reason IS DISTINCT FROM EXCLUDED.reason
    RETURNING xmax = 0 AS created
)
SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM written
"""


def _stage(cursor: Any, table: str, columns: str, records: Iterable[tuple]) -> None:
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns})")
    cursor.execute(f"TRUNCATE {table}")
    with cursor.db.wrap_database_errors, cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for record in records:
            copy.write_row(record)


def contacts_stage(*, cursor: Any, records: Iterable[tuple]) -> None:
    """Copy contact records (row number, then contact_fields_clean's output,
    then the attributes as JSON text) into the session's staging table,
    replacing what it held. ``records`` may be a generator: rows are checked
    while PostgreSQL reads the ones before."""
    _stage(cursor, _CONTACT_STAGE, _CONTACT_STAGE_COLUMNS, records)


def contacts_write_staged(
    *, cursor: Any, source: str, contact_list_id: int | None
) -> tuple[int, int, int]:
    """Upsert the staged contacts by address and subscribe them to the list,
    in one statement; returns (created, updated, left the list before: not
    re-added). Staged addresses must be distinct."""
    # The statement's estimated cost passes the JIT threshold, and compiling
    # it takes longer (about 20 ms) than the compiled code saves on a chunk.
    cursor.execute("SET LOCAL jit = off")
    cursor.execute(
        _CONTACTS_WRITE_SUBSCRIBE if contact_list_id else _CONTACTS_WRITE,
        {"status": Contact.Status.ACTIVE, "source": source, "list": contact_list_id},
    )
    created, updated, kept_out = cursor.fetchone()
    return created, updated, kept_out


def contacts_write(
    *, cursor: Any, rows: list[dict[str, Any]], source: str, contact_list_id: int | None
) -> tuple[int, int, int]:
    """Upsert cleaned contact rows (``contact_row_clean``'s output, distinct
    addresses) and subscribe them to the list; returns (created, updated,
    left the list before: not re-added). The API's bulk upsert writes
    through it, the CSV import through the two steps it is made of."""
    contacts_stage(
        cursor=cursor,
        records=(
            (index, r["key"], r["phone"], r["first_name"], r["last_name"], r["language"],
             r["time_zone"], json.dumps(r["attributes"]))
            for index, r in enumerate(rows)
        ),
    )  # fmt: skip
    return contacts_write_staged(cursor=cursor, source=source, contact_list_id=contact_list_id)


def suppressions_stage(*, cursor: Any, records: Iterable[tuple]) -> None:
    """Copy suppression records (row number, pattern, reason) into the
    session's staging table, replacing what it held."""
    _stage(cursor, _SUPPRESSION_STAGE, _SUPPRESSION_STAGE_COLUMNS, records)


def suppressions_write_staged(*, cursor: Any) -> tuple[int, int]:
    """Upsert the staged suppressions by pattern; returns (created, updated)."""
    cursor.execute(_SUPPRESSIONS_UPSERT, {"source": Suppression.Source.MANUAL})
    created, updated = cursor.fetchone()
    return created, updated


def _contacts_write(cursor: Any, job: ImportJob) -> tuple[int, int, int]:
    return contacts_write_staged(
        cursor=cursor, source=job.source, contact_list_id=job.contact_list_id
    )


def _suppressions_write(cursor: Any, job: ImportJob) -> tuple[int, int, int]:
    return (*suppressions_write_staged(cursor=cursor), 0)


@dataclass(frozen=True)
class _Kind:
    fields: tuple[str, ...]
    # (row number, field values, attributes) -> the record to stage, or RowRejected.
    record: Callable[[int, list[str], list[tuple[str, str]]], tuple]
    stage: Callable[..., None]
    table: str  # the staging table
    key: str  # its column of the key, second in a record after the row number
    # Returns (created, updated, kept unsubscribed from the list).
    write: Callable[[Any, ImportJob], tuple[int, int, int]]


_KINDS = {
    ImportJob.Kind.CONTACTS: _Kind(
        CONTACT_FIELDS, _contact_record, contacts_stage, _CONTACT_STAGE, "email", _contacts_write
    ),
    ImportJob.Kind.SUPPRESSIONS: _Kind(
        SUPPRESSION_FIELDS,
        _suppression_record,
        suppressions_stage,
        _SUPPRESSION_STAGE,
        "pattern",
        _suppressions_write,
    ),
}


# --- Running ------------------------------------------------------------------


@dataclass
class _Counts:
    rows_read: int = 0
    imported: int = 0
    created: int = 0
    updated: int = 0
    kept_unsubscribed: int = 0
    rejected: int = 0


Rejection = tuple[int, str, list[str]]  # row number, reason, the row's cells


@dataclass
class _Checked:
    """A chunk of rows, checked: the records to stage, the rows refused."""

    rows: list[tuple[int, list[str]]]
    position: int  # bytes of the file read up to its last row
    records: list[tuple] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class _Seen:
    """Keys already taken by an earlier chunk of this file, kept in a temporary
    table so a million addresses cost the worker no memory. Keys compare
    byte by byte (collation C), which is what equality means anyway, without
    the cost of the locale's rules in every index comparison."""

    def __init__(self, cursor: Any, job_id: int) -> None:
        self.cursor = cursor
        self.table = f"herald_import_seen_{job_id}"
        cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
        cursor.execute(
            f'CREATE TEMP TABLE {self.table} (key text COLLATE "C" PRIMARY KEY, row integer)'
        )

    def unstage_duplicates(self, kind: _Kind) -> list[tuple[int, int]]:
        """Record the staged keys (distinct within the chunk); take out of the
        staging table the rows whose key an earlier chunk had, and return
        them as (row, the first row with that key)."""
        self.cursor.execute(
            f"""
            WITH fresh AS (
                INSERT INTO {self.table} (key, row) SELECT {kind.key}, row FROM {kind.table}
                ON CONFLICT (key) DO NOTHING
                RETURNING key
            )
            DELETE FROM {kind.table} st
            WHERE NOT EXISTS (SELECT FROM fresh WHERE key = st.{kind.key} COLLATE "C")
            RETURNING st.row, (SELECT row FROM {self.table} WHERE key = st.{kind.key} COLLATE "C")
            """
        )
        return self.cursor.fetchall()

    def drop(self) -> None:
        self.cursor.execute(f"DROP TABLE IF EXISTS {self.table}")


def import_run(*, job_id: int, chunk_rows: int = CHUNK_ROWS) -> ImportJob | None:
    """Run a queued import. Safe to call twice: the second call finds the job
    taken and returns None (unless the first one's worker died)."""
    now = timezone.now()
    claimed = ImportJob.objects.filter(
        Q(status=ImportJob.Status.QUEUED)
        | Q(status=ImportJob.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER),
        pk=job_id,
    ).update(
        status=ImportJob.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        bytes_read=0,
        rows_read=0,
        imported=0,
        created=0,
        updated=0,
        kept_unsubscribed=0,
        rejected=0,
        error="",
    )
    if claimed != 1:
        return None
    job = ImportJob.objects.get(pk=job_id)
    try:
        _import(job, chunk_rows)
    except (_FileBroken, OSError, SoftTimeLimitExceeded) as exc:
        message = str(exc) if isinstance(exc, _FileBroken) else f"The import stopped: {exc!r}."
        _finish(job, ImportJob.Status.FAILED, f"{message} Rows before it were imported.")
    except Exception:
        _finish(job, ImportJob.Status.FAILED, "The import stopped on an unexpected error.")
        raise
    else:
        _finish(job, ImportJob.Status.DONE, "")
        source_path(job).unlink(missing_ok=True)
    job.refresh_from_db()
    return job


def _finish(job: ImportJob, status: str, error: str) -> None:
    ImportJob.objects.filter(pk=job.pk).update(
        status=status, error=error, finished_at=timezone.now(), heartbeat_at=timezone.now()
    )


def _import(job: ImportJob, chunk_rows: int) -> None:
    kind = _KINDS[ImportJob.Kind(job.kind)]
    counts = _Counts()
    reader = _Reader(source_path(job), job.delimiter)
    chunks = _checked_chunks(kind, _plan(job.mapping, kind.fields), reader, chunk_rows)
    with (
        connection.cursor() as cursor,
        report_path(job).open("w", newline="") as report_file,
        # Closed on the way out whatever happens, which stops the checking thread.
        contextlib.closing(_ahead(chunks)) as checked_chunks,
    ):
        report = csv.writer(report_file)
        report.writerow(["row", "reason", *(csv_safe(h) for h in job.headers)])
        seen = _Seen(cursor, job.pk)
        try:
            for checked in checked_chunks:
                rejections = _write_chunk(cursor, kind, job, checked, seen, counts)
                for row, reason, cells in sorted(rejections):
                    report.writerow([row, reason, *(csv_safe(c) for c in cells)])
                report_file.flush()
                _progress(job, counts, checked.position)
        finally:
            seen.drop()
    _progress(job, counts, reader.position)


def _chunks(
    records: Iterable[tuple[int, list[str]]], size: int
) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for row, cells in records:
        if not (cells and cells[0].strip()) and not any(c.strip() for c in cells):
            continue  # a blank line is not a row anybody meant
        chunk.append((row, cells))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _checked_chunks(kind: _Kind, plan: _Plan, reader: _Reader, size: int) -> Iterator[_Checked]:
    """Each chunk's rows checked, and a key repeated within it rejected; a
    key from an earlier chunk is found when the chunk is written."""
    for chunk in _chunks(reader, size):
        checked = _Checked(chunk, reader.position)
        first: dict[str, int] = {}
        for row, cells in chunk:
            try:
                record = kind.record(row, *_cells(plan, cells))
            except RowRejected as exc:
                checked.rejections.append((row, str(exc), cells))
                continue
            key = record[1]
            if key in first:
                checked.rejections.append((row, _duplicate(first[key]), cells))
            else:
                first[key] = row
                checked.records.append(record)
        yield checked


_END = object()


def _ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a thread of their own up to ``depth`` ahead.

    Reading and checking rows is Python's work, writing them PostgreSQL's,
    during which the writing thread waits with the GIL released. One after
    the other they add up; this way the next chunk is checked while this one
    is written. Only the consuming thread touches the database (Django's
    connection belongs to it), and the queue keeps memory to a few chunks."""
    queue: Queue[tuple[Any, BaseException | None]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                queue.put((item, error), timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            with contextlib.closing(items):  # type: ignore[type-var]
                for item in items:
                    if not put(item):
                        return  # the consumer has gone
        except BaseException as exc:  # noqa: BLE001 (raised again where items are consumed)
            put(_END, exc)
        else:
            put(_END)

    thread = threading.Thread(target=produce, name="herald-import-check", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _write_chunk(
    cursor: Any, kind: _Kind, job: ImportJob, checked: _Checked, seen: _Seen, counts: _Counts
) -> list[Rejection]:
    """Write a checked chunk in one transaction; returns all its rejections."""
    staged = len(checked.records)
    with transaction.atomic():
        kind.stage(cursor=cursor, records=checked.records)
        checked.records.clear()  # in the database now; free while it writes
        duplicates = seen.unstage_duplicates(kind)
        created, updated, kept_unsubscribed = kind.write(cursor, job)
    cells = dict(checked.rows) if duplicates else {}
    rejections = checked.rejections + [
        (row, _duplicate(first), cells[row]) for row, first in duplicates
    ]
    counts.rows_read += len(checked.rows)
    counts.imported += staged - len(duplicates)
    counts.created += created
    counts.updated += updated
    counts.kept_unsubscribed += kept_unsubscribed
    counts.rejected += len(rejections)
    return rejections


def _duplicate(first_row: int) -> str:
    return f"duplicate in file (same address as row {first_row})"


def _progress(job: ImportJob, counts: _Counts, position: int) -> None:
    ImportJob.objects.filter(pk=job.pk).update(
        bytes_read=position,
        rows_read=counts.rows_read,
        imported=counts.imported,
        created=counts.created,
        updated=counts.updated,
        kept_unsubscribed=counts.kept_unsubscribed,
        rejected=counts.rejected,
        heartbeat_at=timezone.now(),
    )


def import_report_rows(*, job: ImportJob, limit: int = 100) -> list[list[str]]:
    """The first rejected rows, to show on the page (the download has all)."""
    path = report_path(job)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        return [row for _, row in zip(range(limit), reader, strict=False)]
