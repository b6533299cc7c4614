"""Parallel sending over reused connections.

A SendPool keeps up to ``size`` transports open, one per thread, and
sends each message on whichever is free. The caller stays in its own
thread (where the database work happens) and gets results back in the
order they complete. No more than ``size`` messages are ever in flight:
what a crash can leave on the wire is one message per connection (the
caller's own bookkeeping may add to what it must treat as in doubt).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .transports import ConnectionLost, SendResult, Transport
from .transports.base import Message

if TYPE_CHECKING:
    from .signing import Signer

K = TypeVar("K")


@dataclass(frozen=True)
class Completion(Generic[K]):
    key: K
    result: SendResult | None  # None when the connection was lost
    lost: ConnectionLost | None = None


class SendPool(Generic[K]):
    def __init__(
        self, factory: Callable[[], Transport], size: int, *, signer: Signer | None = None
    ) -> None:
        self.size = max(size, 1)
        self._factory = factory
        self._signer = signer
        self._local = threading.local()
        self._opened: list[Transport] = []
        self._opened_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="herald-send")
        # Finished sends, queued by the sending threads: cheaper than waiting
        # on every future in flight twice per message.
        self._done: queue.SimpleQueue[tuple[K, SendResult | None, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._in_flight = 0

    def _transport(self) -> Transport:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._factory()
            transport.open()  # raises ConnectionLost; the next call retries
            self._local.transport = transport
            with self._opened_lock:
                self._opened.append(transport)
        return transport

    def _send(self, message: Message, sender: str, recipient: str) -> SendResult:
        if self._signer is not None:
            # The last step before the wire: nothing may change the message after.
            message = self._signer.sign(message)
        try:
            return self._transport().send(message, sender=sender, recipient=recipient)
        except ConnectionLost as lost:
            self._drop()
            if lost.result is not None:
                return lost.result  # a verdict on this message; the next opens a new session
            raise

    def _drop(self) -> None:
        transport = getattr(self._local, "transport", None)
        if transport is not None:
            transport.close()
            self._local.transport = None

    @property
    def full(self) -> bool:
        return self._in_flight >= self.size

    def submit(self, key: K, message: Message, *, sender: str, recipient: str) -> None:
        self._executor.submit(self._send_one, key, message, sender, recipient)
        self._in_flight += 1

    def _send_one(self, key: K, message: Message, sender: str, recipient: str) -> None:
        try:
            self._done.put((key, self._send(message, sender, recipient), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._done.put((key, None, exc))

    def completed(self, *, block: bool) -> Iterator[Completion[K]]:
        """Results of finished sends; with ``block``, wait for at least one."""
        while self._in_flight:
            try:
                key, result, error = self._done.get(block=block)
            except queue.Empty:
                return
            block = False
            self._in_flight -= 1
            if isinstance(error, ConnectionLost):
                yield Completion(key, None, error)
            elif error is not None:
                raise error
            else:
                yield Completion(key, result)

    def drain(self) -> Iterator[Completion[K]]:
        while self._in_flight:
            yield from self.completed(block=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._opened_lock:
            for transport in self._opened:
                transport.close()
            self._opened.clear()
