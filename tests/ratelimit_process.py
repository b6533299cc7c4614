"""One sending process for the rate-limit tests: claims batches for a
dispatcher on a compressed clock and sends each for real, writing what
each claim handed out (the claim's virtual time, size) as JSON lines.

    python -m tests.ratelimit_process <dispatcher id> <start iso> <speedup> <seconds> <out>

The clock is shared: virtual time is ``start`` plus the wall-clock time
since ``start`` times the speedup, the same in every process however late
each one starts.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta


def main(dispatcher_id: int, start: datetime, speedup: float, seconds: float, out: str) -> None:
    import django

    django.setup()
    from campaigns import services

    began = start.timestamp()
    with open(out, "a") as records:
        while (elapsed := time.time() - began) < seconds:
            now = start + timedelta(seconds=elapsed * speedup)
            batch = services.batch_claim(dispatcher_id=dispatcher_id, now=now)
            if batch is None:
                time.sleep(0.01)
                continue
            # The claim's own time: later than ``now`` when another process
            # spent in a later minute while this one waited for the lock.
            at = batch.created_at.isoformat()
            records.write(json.dumps({"at": at, "size": batch.size}) + "\n")
            records.flush()
            services.batch_send(batch_id=batch.pk)


if __name__ == "__main__":
    dispatcher, start, speedup, seconds, out = sys.argv[1:]
    main(int(dispatcher), datetime.fromisoformat(start), float(speedup), float(seconds), out)
