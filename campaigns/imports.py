"""CSV import of contacts and suppressions, streamed from a file on disk.

The upload is written to settings.VAR_DIR / "imports" as it arrives and is
never held in memory whole. The import reads it row by row, checks each row,
and writes good rows a chunk at a time with one set-based upsert per chunk
(INSERT ... ON CONFLICT DO UPDATE), so a million rows cost a thousand
statements, and re-importing a file changes nothing that is already so.
Every rejected row goes to a report CSV with its row number and reason.

Row numbers are spreadsheet rows: the header is row 1, the first data row
is row 2, and a quoted cell spanning several lines is still one row."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

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

CHUNK_ROWS = 1000
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
    position: int = 0

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        with self.path.open("rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.reader(text, delimiter=self.delimiter)
            row = 1
            try:
                next(reader)
                for cells in reader:
                    row += 1
                    self.position = raw.tell()
                    yield row, cells
            except csv.Error as exc:
                raise _FileBroken(f"Row {row + 1} could not be read as CSV: {exc}.") from None
            self.position = raw.tell()


class _FileBroken(Exception):
    pass


def _records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    yield from _Reader(path, delimiter)


def _unescape(cell: str) -> str:
    # Undo the quote our exports put before a cell that looks like a formula,
    # so an exported file imports back unchanged.
    if len(cell) > 1 and cell[0] == "'" and cell[1] in "=+-@\t\r":
        return cell[1:]
    return cell


def _cells(
    mapping: list[dict[str, str]], cells: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    if len(cells) > len(mapping) and any(c.strip() for c in cells[len(mapping) :]):
        raise RowRejected(
            f"the row has more columns than the header ({len(cells)} > {len(mapping)})"
        )
    values: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for column, cell in zip(mapping, cells, strict=False):
        kind = column["field"]
        if kind == "ignore":
            continue
        value = _unescape(cell.strip())
        if kind == "attribute":
            if value:
                attributes[column["name"]] = value
        else:
            values[kind] = value
    return values, attributes


# --- Checking rows ------------------------------------------------------------


def normalise_email(value: str) -> str:
    if not value:
        raise RowRejected("missing required field: email")
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


def _name(value: str, label: str) -> str:
    try:
        validate_header_value(value)
    except ValidationError:
        raise RowRejected(f"header-injection characters in {label}") from None
    if len(value) > 100:
        raise RowRejected(f"{label} is longer than 100 characters")
    return value


def contact_row_clean(values: dict[str, str], attributes: dict[str, str]) -> dict[str, Any]:
    language = values.get("language", "")
    if language and not _LANGUAGE.match(language):
        raise RowRejected(f"invalid language: {language!r} (use a code such as en or pt-BR)")
    time_zone = values.get("time_zone", "")
    if time_zone and time_zone not in _TIME_ZONES:
        raise RowRejected(f"invalid time zone: {time_zone!r} (use a name such as Europe/Paris)")
    return {
        "key": normalise_email(values.get("email", "")),
        "phone": normalise_phone(values.get("phone", "")),
        "first_name": _name(values.get("first_name", ""), "first name"),
        "last_name": _name(values.get("last_name", ""), "last name"),
        "language": language,
        "time_zone": time_zone,
        "attributes": {k: attribute_value(v) for k, v in attributes.items()},
    }


def suppression_row_clean(values: dict[str, str], attributes: dict[str, str]) -> dict[str, Any]:
    pattern = values.get("pattern", "")
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
    reason = values.get("reason", "")
    if len(reason) > 255:
        raise RowRejected("reason is longer than 255 characters")
    return {"key": key, "reason": reason}


# --- Writing chunks -----------------------------------------------------------

_CONTACTS_UPSERT = """
INSERT INTO campaigns_contact AS c (
    email, phone, first_name, last_name, language, time_zone, attributes,
    status, source, created_at, updated_at
)
SELECT e, p, f, l, lang, tz, a::jsonb, %(status)s, %(source)s, now(), now()
FROM unnest(
    %(email)s::text[], %(phone)s::text[], %(first)s::text[], %(last)s::text[],
    %(lang)s::text[], %(tz)s::text[], %(attrs)s::text[]
) AS t(e, p, f, l, lang, tz, a)
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
RETURNING xmax = 0
"""

# A contact who left the list keeps their row, marked unsubscribed: the
# conflict leaves it as it is (no import re-subscribes anybody), and the
# statement counts them for the report.
_SUBSCRIBE = """
WITH named AS (SELECT c.id FROM campaigns_contact c WHERE c.email = ANY(%(email)s::text[])),
added AS (
    INSERT INTO campaigns_subscription (contact_id, contact_list_id, created_at, source)
    SELECT id, %(list)s, now(), %(source)s FROM named
    ON CONFLICT (contact_list_id, contact_id) DO NOTHING
)
SELECT count(*) FROM campaigns_subscription s JOIN named ON named.id = s.contact_id
WHERE s.contact_list_id = %(list)s AND s.unsubscribed_at IS NOT NULL
"""

_SUPPRESSIONS_UPSERT = """
INSERT INTO campaigns_suppression AS s (pattern, reason, source, created_at)
SELECT p, r, %(source)s, now()
FROM unnest(%(pattern)s::text[], %(reason)s::text[]) AS t(p, r)
ON CONFLICT (pattern) DO UPDATE SET reason = EXCLUDED.reason
WHERE EXCLUDED.reason <> '' AND s.reason IS DISTINCT FROM EXCLUDED.reason
RETURNING xmax = 0
"""


def contacts_write(
    *, cursor: Any, rows: list[dict[str, Any]], source: str, contact_list_id: int | None
) -> tuple[int, int, int]:
    """Upsert cleaned contact rows (``contact_row_clean``'s output) in one
    statement and subscribe them to the list; returns (created, updated,
    left the list before: not re-added). The CSV import and the API's
    bulk upsert both write through it."""
    emails = [r["key"] for r in rows]
    cursor.execute(
        _CONTACTS_UPSERT,
        {
            "status": Contact.Status.ACTIVE,
            "source": source,
            "email": emails,
            "phone": [r["phone"] for r in rows],
            "first": [r["first_name"] for r in rows],
            "last": [r["last_name"] for r in rows],
            "lang": [r["language"] for r in rows],
            "tz": [r["time_zone"] for r in rows],
            "attrs": [json.dumps(r["attributes"]) for r in rows],
        },
    )
    results = [inserted for (inserted,) in cursor.fetchall()]
    kept_out = 0
    if contact_list_id:
        cursor.execute(_SUBSCRIBE, {"list": contact_list_id, "source": source, "email": emails})
        (kept_out,) = cursor.fetchone()
    created = sum(results)
    return created, len(results) - created, kept_out


def _contacts_write(
    cursor: Any, job: ImportJob, rows: list[dict[str, Any]]
) -> tuple[int, int, int]:
    return contacts_write(
        cursor=cursor, rows=rows, source=job.source, contact_list_id=job.contact_list_id
    )


def _suppressions_write(
    cursor: Any, job: ImportJob, rows: list[dict[str, Any]]
) -> tuple[int, int, int]:
    cursor.execute(
        _SUPPRESSIONS_UPSERT,
        {
            "source": Suppression.Source.MANUAL,
            "pattern": [r["key"] for r in rows],
            "reason": [r["reason"] for r in rows],
        },
    )
    results = [inserted for (inserted,) in cursor.fetchall()]
    created = sum(results)
    return created, len(results) - created, 0


@dataclass(frozen=True)
class _Kind:
    clean: Callable[[dict[str, str], dict[str, str]], dict[str, Any]]
    # Returns (created, updated, kept unsubscribed from the list).
    write: Callable[[Any, ImportJob, list[dict[str, Any]]], tuple[int, int, int]]


_KINDS = {
    ImportJob.Kind.CONTACTS: _Kind(contact_row_clean, _contacts_write),
    ImportJob.Kind.SUPPRESSIONS: _Kind(suppression_row_clean, _suppressions_write),
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
    rejections: list[tuple[int, str, list[str]]] = field(default_factory=list)


class _Seen:
    """Keys already taken by an earlier row of this file, kept in a temporary
    table so a million addresses cost the worker no memory."""

    def __init__(self, cursor: Any, job_id: int) -> None:
        self.cursor = cursor
        self.table = f"herald_import_seen_{job_id}"
        cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
        cursor.execute(f"CREATE TEMP TABLE {self.table} (key text PRIMARY KEY, row integer)")

    def claim(self, keys: list[str], rows: list[int]) -> dict[str, int]:
        """Record the keys; return those seen before, with their first row."""
        self.cursor.execute(
            f"INSERT INTO {self.table} SELECT * FROM unnest(%s::text[], %s::int[]) "
            "ON CONFLICT (key) DO NOTHING RETURNING key",
            [keys, rows],
        )
        fresh = {key for (key,) in self.cursor.fetchall()}
        taken = [k for k in keys if k not in fresh]
        if not taken:
            return {}
        self.cursor.execute(
            f"SELECT key, row FROM {self.table} WHERE key = ANY(%s::text[])", [taken]
        )
        return dict(self.cursor.fetchall())

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
    with connection.cursor() as cursor, report_path(job).open("w", newline="") as report_file:
        report = csv.writer(report_file)
        report.writerow(["row", "reason", *(csv_safe(h) for h in job.headers)])
        seen = _Seen(cursor, job.pk)
        try:
            for chunk in _chunks(reader, chunk_rows):
                good = _check(kind, job.mapping, chunk, counts)
                _write_chunk(cursor, kind, job, good, seen, counts)
                for row, reason, cells in sorted(counts.rejections):
                    report.writerow([row, reason, *(csv_safe(c) for c in cells)])
                counts.rejections.clear()
                report_file.flush()
                _progress(job, counts, reader.position)
        finally:
            seen.drop()
    _progress(job, counts, reader.position)


def _chunks(
    records: Iterable[tuple[int, list[str]]], size: int
) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for row, cells in records:
        if not any(c.strip() for c in cells):
            continue  # a blank line is not a row anybody meant
        chunk.append((row, cells))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check(
    kind: _Kind,
    mapping: list[dict[str, str]],
    chunk: list[tuple[int, list[str]]],
    counts: _Counts,
) -> list[tuple[int, list[str], dict[str, Any]]]:
    good = []
    for row, cells in chunk:
        counts.rows_read += 1
        try:
            good.append((row, cells, kind.clean(*_cells(mapping, cells))))
        except RowRejected as exc:
            counts.rejections.append((row, str(exc), cells))
    return good


def _write_chunk(
    cursor: Any,
    kind: _Kind,
    job: ImportJob,
    good: list[tuple[int, list[str], dict[str, Any]]],
    seen: _Seen,
    counts: _Counts,
) -> None:
    first: dict[str, int] = {}
    unique = []
    for row, cells, clean in good:
        if clean["key"] in first:
            counts.rejections.append((row, _duplicate(first[clean["key"]]), cells))
        else:
            first[clean["key"]] = row
            unique.append((row, cells, clean))
    with transaction.atomic():
        earlier = seen.claim([c["key"] for _, _, c in unique], [r for r, _, _ in unique])
        rows = []
        for row, cells, clean in unique:
            if clean["key"] in earlier:
                counts.rejections.append((row, _duplicate(earlier[clean["key"]]), cells))
            else:
                rows.append(clean)
        if rows:
            created, updated, kept_unsubscribed = kind.write(cursor, job, rows)
            counts.created += created
            counts.updated += updated
            counts.kept_unsubscribed += kept_unsubscribed
            counts.imported += len(rows)
    counts.rejected += len(counts.rejections)


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
