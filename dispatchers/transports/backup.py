"""File backup: a copy of each sent message as an .eml file, on top of any mode.

The folder is a path with placeholders ({campaign}, {subject},
{recipient}, {date}). Their values come from the message and the
recipient, so they are treated as hostile: each becomes one harmless
path segment (no separators, no "..", no NUL or control characters,
bounded length), and the expanded folder is checked to stay under the
part of the path that has no placeholder.
"""

from __future__ import annotations

import logging
import os
import re
import string
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path, PurePosixPath

from django.core.exceptions import ValidationError

from .base import Outcome, SendResult, Transport
from .pickup import file_name, write_atomically

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("campaign", "subject", "recipient", "date")
# Bytes, not characters, bound a file name (255 on ext4); keep each value
# well under it so several in one segment still fit.
MAX_VALUE_BYTES = 80
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def _fields(path: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(path))
    except ValueError as exc:
        raise ValidationError(
            "Unbalanced braces: write placeholders as {campaign}, {subject}, {recipient} "
            "or {date}.",
            code="braces",
        ) from exc


def validate_backup_path(value: str) -> None:
    if not value:
        return
    if "\x00" in value or any(ord(c) < 32 for c in value):
        raise ValidationError(
            "The folder must not contain line breaks or control characters.", code="control"
        )
    if not value.startswith("/"):
        raise ValidationError(
            "Enter an absolute folder path, e.g. /srv/herald/backup/{date}.", code="relative"
        )
    if ".." in PurePosixPath(value).parts:
        raise ValidationError(
            "The folder must not contain “..”: name the folder itself.", code="parent"
        )
    for _literal, name, spec, conversion in _fields(value):
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise ValidationError(
                f"Unknown placeholder {{{name}}}: use {{campaign}}, {{subject}}, "
                "{recipient} or {date}.",
                code="placeholder",
            )
        if spec or conversion:
            raise ValidationError(
                f"Write the placeholder as {{{name}}}, without a format.", code="placeholder"
            )
    if backup_root(value) == Path("/"):
        raise ValidationError(
            "Start the folder with a fixed part, e.g. /srv/herald/backup/{date}, not a "
            "placeholder at the top.",
            code="root",
        )


def backup_root(path: str) -> Path:
    """The fixed folder above the first placeholder: nothing may leave it."""
    fixed = path.split("{", 1)[0]
    if "{" in path:
        fixed = fixed.rsplit("/", 1)[0] or "/"
    return Path(os.path.normpath(fixed))


def sanitise(value: str) -> str:
    """One path segment that cannot be a separator, ".." or hidden file."""
    value = _UNSAFE.sub("_", value).strip()
    value = value.lstrip(".").strip() or "_"  # "..", ".hidden", "..." all go
    data = value.encode("utf-8")[:MAX_VALUE_BYTES]
    return data.decode("utf-8", "ignore").rstrip(" .") or "_"


def backup_folder(
    path: str, *, message: EmailMessage, recipient: str, now: datetime | None = None
) -> Path:
    """The folder for this message, proven to stay under the fixed root."""
    feedback = str(message.get("Feedback-ID") or "")
    campaign = feedback.split(":", 1)[0] if ":campaign:" in feedback else ""
    values = {
        "campaign": sanitise(campaign or "no-campaign"),
        "subject": sanitise(str(message.get("Subject") or "no-subject")),
        "recipient": sanitise(recipient),
        "date": (now or datetime.now(UTC)).strftime("%Y-%m-%d"),
    }
    folder = Path(os.path.normpath(path.format_map(values)))
    root = backup_root(path)
    if folder != root and root not in folder.parents:
        # Unreachable with sanitised values; kept as the last line of defence.
        raise ValueError(f"Backup folder {folder} is outside {root}")
    return folder


class BackupTransport(Transport):
    """Sends through ``inner``, then keeps a copy of what was accepted.

    A backup that cannot be written never fails the send: the message is
    already on its way, and reporting it unsent would send it twice."""

    def __init__(self, inner: Transport, *, path: str) -> None:
        self.inner = inner
        self.path = path

    def open(self) -> None:
        self.inner.open()

    def send(self, message: EmailMessage, *, sender: str, recipient: str) -> SendResult:
        result = self.inner.send(message, sender=sender, recipient=recipient)
        if result.outcome is Outcome.ACCEPTED:
            self._keep(message, recipient)
        return result

    def _keep(self, message: EmailMessage, recipient: str) -> None:
        try:
            folder = backup_folder(self.path, message=message, recipient=recipient)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder, file_name(message), message)
        except (OSError, ValueError) as exc:
            logger.warning("File backup not written to %s: %s", self.path, exc)

    def close(self) -> None:
        self.inner.close()
