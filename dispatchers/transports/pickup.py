"""Local outbox: each message lands as an .eml file, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .base import ConnectionLost, Message, Outcome, SendResult, Transport, message_bytes


class PickupTransport(Transport):
    def __init__(self, *, directory: str) -> None:
        self.directory = Path(directory)

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectionLost(f"Cannot create outbox folder {self.directory}: {exc}") from exc

    def send(self, message: Message, *, sender: str, recipient: str) -> SendResult:
        name = file_name(message)
        try:
            write_atomically(self.directory, name, message)
        except OSError as exc:
            raise ConnectionLost(f"Cannot write to outbox {self.directory}: {exc}") from exc
        return SendResult(Outcome.ACCEPTED, code=250, text="written", queue_id=name)


def write_atomically(directory: Path, name: str, message: Message) -> None:
    # Write under a temporary name and rename: a pickup reader never sees
    # half a message, and a rerun overwrites instead of doubling.
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(message_bytes(message))
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_name(message: Message) -> str:
    msgid = str(message.get("Message-ID", "")).strip("<>")
    safe = "".join(c if c.isalnum() or c in "-._@" else "_" for c in msgid)
    safe = safe.lstrip(".")[:200]
    return f"{safe or 'message'}.eml"
