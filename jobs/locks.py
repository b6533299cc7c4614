"""Session-level PostgreSQL advisory locks, for work one process at a time.

PostgreSQL drops such a lock the instant its holder's connection dies, so
"can I take the lock?" also answers "is whoever took it still alive?",
without waiting for a lease to run out. Each kind of work has its own
namespace (the first key), so ids of different tables never collide."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

BATCHES = 4242  # campaigns: an outbound batch being sent
BOUNCE_MAILBOXES = 4243  # bounces: a mailbox being read


@contextmanager
def advisory_lock(*, space: int, key: int) -> Iterator[bool]:
    """Try to take the lock; yields whether it was taken, and releases it."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [space, key])
        got = bool(cur.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s, %s)", [space, key])
