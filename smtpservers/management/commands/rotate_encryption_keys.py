"""Re-encrypt every stored secret under the newest key.

Run it after putting a new key first in HERALD_ENCRYPTION_KEYS; once it
has finished, the old keys can be dropped from the setting. It works on
the raw ciphertext (MultiFernet.rotate), so no plaintext ever passes
through Python objects, and it never prints a value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, models, router, transaction

from smtpservers.encryption import EncryptedTextField, fernet


@dataclass
class Counts:
    rows: int = 0
    values: int = 0


def encrypted_fields() -> list[tuple[type[models.Model], list[EncryptedTextField]]]:
    """Every concrete model with EncryptedTextField columns in its own table."""
    found = []
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed or model._meta.swapped:
            continue
        fields = [f for f in model._meta.local_concrete_fields if isinstance(f, EncryptedTextField)]
        if fields:
            found.append((model, fields))
    return found


def model_rotate(
    *, model: type[models.Model], fields: list[EncryptedTextField], batch_size: int, dry_run: bool
) -> Counts:
    """Rotate one model's secret columns, a keyset page of rows at a time.

    One transaction for the model, with the rows locked as they are read,
    so a secret saved meanwhile is never overwritten by an older one."""
    using = router.db_for_write(model)
    connection = connections[using]
    qn = connection.ops.quote_name
    table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
    columns = [qn(f.column) for f in fields]
    lock = "" if dry_run else " FOR UPDATE"
    first_page = f"SELECT {pk}, {', '.join(columns)} FROM {table} ORDER BY {pk} LIMIT %s{lock}"
    next_page = (
        f"SELECT {pk}, {', '.join(columns)} FROM {table} WHERE {pk} > %s "
        f"ORDER BY {pk} LIMIT %s{lock}"
    )
    update = f"UPDATE {table} SET {', '.join(f'{c} = %s' for c in columns)} WHERE {pk} = %s"
    multi = fernet()
    counts = Counts()
    with transaction.atomic(using=using), connection.cursor() as cursor:
        last: Any = None
        while True:
            if last is None:
                cursor.execute(first_page, [batch_size])
            else:
                cursor.execute(next_page, [last, batch_size])
            rows = cursor.fetchall()
            if not rows:
                break
            changes = []
            for row in rows:
                last = row[0]
                tokens = list(row[1:])
                rotated = [
                    _rotate(multi, token, model=model, field=field, pk=last)
                    for token, field in zip(tokens, fields, strict=True)
                ]
                n = sum(1 for token in tokens if token)
                if n:
                    counts.rows += 1
                    counts.values += n
                    changes.append([*rotated, last])
            if changes and not dry_run:
                cursor.executemany(update, changes)
    return counts


def _rotate(
    multi: MultiFernet,
    token: str | None,
    *,
    model: type[models.Model],
    field: EncryptedTextField,
    pk: Any,
) -> str | None:
    if not token:
        return token  # NULL or the empty string: nothing is stored
    try:
        return multi.rotate(token.encode()).decode()
    except InvalidToken as exc:
        # Name the row, never the value.
        raise CommandError(
            f"{model._meta.label}.{field.name} of row {pk} cannot be decrypted with any key "
            "in HERALD_ENCRYPTION_KEYS; nothing of this model was changed. Put back the key "
            "it was encrypted with and run again."
        ) from exc


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted field under the newest key of HERALD_ENCRYPTION_KEYS, "
        "so older keys can then be removed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check that every value decrypts and count them; write nothing.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=500, help="Rows read and written at a time."
        )

    def handle(self, *args: Any, dry_run: bool, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            fernet()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        total = 0
        for model, fields in encrypted_fields():
            counts = model_rotate(
                model=model, fields=fields, batch_size=batch_size, dry_run=dry_run
            )
            total += counts.values
            names = ", ".join(f.name for f in fields)
            self.stdout.write(
                f"{model._meta.label} ({names}): {verb} {counts.values} value(s) "
                f"in {counts.rows} row(s)"
            )
        summary = f"Dry run: would re-encrypt {total}" if dry_run else f"Re-encrypted {total}"
        summary += " value(s) in total."
        self.stdout.write(self.style.SUCCESS(summary))
