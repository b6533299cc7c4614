"""Parallel sending over reused connections.

A SendPool keeps up to ``size`` transports open, one per thread, and
sends each message on whichever is free. The caller stays in its own
thread (where the database work happens) and gets results back in the
order they complete. No more than ``DEPTH x size`` messages are ever in
flight, and what a crash can leave on the wire, possibly delivered, is
one message per connection (the caller's own bookkeeping may add to what
it must treat as in doubt). An SMTP relay gets an SmtpSendPool instead
(``send_pool_for``): its sessions driven by one event loop in one thread,
two messages in flight a session when the server offers PIPELINING.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from smtpservers.client import SessionError

from .transports import ConnectionLost, SendResult, Transport
from .transports.base import Message, WireMessage, message_bytes, transport_for
from .transports.smtp import Job, SmtpSession, session_recorded

if TYPE_CHECKING:
    from smtpservers.models import SmtpServer

    from .models import Dispatcher
    from .signing import Signer

K = TypeVar("K")


@dataclass(frozen=True)
class Completion(Generic[K]):
    key: K
    result: SendResult | None  # None when the connection was lost
    lost: ConnectionLost | None = None


class SendPool(Generic[K]):
    DEPTH = 1  # messages in flight a transport

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
        return self._in_flight >= self.DEPTH * self.size

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
            yield _completion(key, result, error)

    def drain(self) -> Iterator[Completion[K]]:
        while self._in_flight:
            yield from self.completed(block=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._opened_lock:
            for transport in self._opened:
                transport.close()
            self._opened.clear()


def _completion(key: K, result: SendResult | None, error: BaseException | None) -> Completion[K]:
    if isinstance(error, ConnectionLost):
        return Completion(key, None, error)
    if error is not None:
        raise error
    return Completion(key, result)


class SmtpSendPool(SendPool[K]):
    """A SendPool for an SMTP relay: its ``size`` sessions are driven by one
    event loop in one thread, instead of a thread and a loop per session.

    Measured on loopback: a thread per session costs ~350 us of CPU a
    message (thread hand-offs, a run_until_complete per message, the GIL
    passed around five threads); one loop for all of them a fraction of
    that. Same contract: results in the order they complete, a lost
    session reported for every message it carried and opened again for
    the next. A session streams (``SmtpSession.stream``): the next
    message's envelope goes out with the final dot of the one before, so
    it holds up to ``DEPTH`` messages, one of them past its final dot."""

    # Two a session: one whose data and final dot are on the wire, and the
    # next, whose envelope travels with that dot (PIPELINING). Still one a
    # session that a lost connection can leave possibly delivered.
    DEPTH = 2

    def __init__(
        self, server: SmtpServer, size: int, *, signer: Signer | None = None, window: int = 0
    ) -> None:
        self.size = max(size, 1)
        # Messages handed over and not yet answered, queued for the sessions
        # beyond the two each holds: the caller renders while the loop
        # thread waits for the GIL, so a window of a few dozen keeps the
        # sessions busy through a whole switch interval (5 ms) of rendering.
        # Measured at 50,000 messages, 4 sessions: a window of 8, 3,600 to
        # 4,200 messages/s; of 100, 4,500 to 5,100.
        self.window = max(self.DEPTH * self.size, window)
        self._server = server
        self._signer = signer
        # Results, appended by the loop thread. A caller that waits for them
        # is woken once a quarter of the window is back, not for each one:
        # woken per result, it rendered one message, found the window full
        # again and slept, two thread switches a message (five futex calls
        # a message under strace), where now it renders a quarter window in
        # one go while the sessions still hold the rest.
        self._results: deque[tuple[K, SendResult | None, BaseException | None]] = deque()
        self._awaited = 0  # results the caller sleeps until; 0 when it does not
        self._enough = threading.Event()
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._waiting: asyncio.Queue[Job | None] | None = None
        # Handed over from the caller's thread: one wake-up of the loop
        # takes all that came meanwhile, instead of one per message.
        self._handed: deque[Job] = deque()
        self._wake_pending = False
        self._sessions: list[SmtpSession] = []
        self._thread = threading.Thread(target=self._run, name="herald-send", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    @property
    def full(self) -> bool:
        return self._in_flight >= self.window

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._waiting = asyncio.Queue()
        workers = [self._loop.create_task(self._work()) for _ in range(self.size)]
        self._started.set()
        self._loop.run_until_complete(asyncio.gather(*workers))
        self._loop.close()

    def submit(self, key: K, message: Message, *, sender: str, recipient: str) -> None:
        if self._signer is not None:
            # The last step before the wire: nothing may change the message after.
            message = self._signer.sign(message)
        self._in_flight += 1
        canonical = isinstance(message, WireMessage)
        self._handed.append((key, message_bytes(message), sender, recipient, canonical))
        # After the append: a wake-up the loop has already cleared is asked
        # for again, and one still to run will find this job.
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._take_handed)

    def _take_handed(self) -> None:
        assert self._waiting is not None
        self._wake_pending = False  # before taking: a job appended now asks again
        while self._handed:
            self._waiting.put_nowait(self._handed.popleft())

    async def _work(self) -> None:
        assert self._waiting is not None
        session: SmtpSession | None = None
        job = await self._waiting.get()
        while job is not None:
            key, data, sender, recipient, _ = job
            leftover = None
            try:
                if session is None:
                    session = await self._open()
                if session.streams(sender, recipient):
                    leftover = await session.stream(job, take=self._ready, report=self._report)
                else:
                    self._report(key, await session.send(data, sender=sender, recipient=recipient))
            except ConnectionLost as exc:
                self._report(key, None, exc)
                if session is not None:
                    session.lost = True
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._report(key, None, exc)
            if session is not None and session.lost:
                await session.close()
                session = None
            job = leftover if leftover is not None else await self._waiting.get()
        if session is not None:
            await session.close()

    def _ready(self) -> Job | None:
        """The next job if one is waiting already (never the end-of-work mark)."""
        assert self._waiting is not None
        if self._waiting.empty():
            return None
        job = self._waiting.get_nowait()
        if job is None:  # closing: the mark goes back for this worker's own loop
            self._waiting.put_nowait(None)
        return job

    def _report(
        self, key: K, result: SendResult | None, error: BaseException | None = None
    ) -> None:
        self._results.append((key, result, error))
        if self._awaited and len(self._results) >= self._awaited:
            self._awaited = 0
            self._enough.set()

    def completed(self, *, block: bool) -> Iterator[Completion[K]]:
        """Results of finished sends; with ``block``, wait until a quarter
        of the window (or all that is in flight, if less) is back."""
        if block and self._in_flight:
            self._await(min(max(self.window // 4, 1), self._in_flight))
        while self._results:
            key, result, error = self._results.popleft()
            self._in_flight -= 1
            yield _completion(key, result, error)

    def _await(self, count: int) -> None:
        self._enough.clear()
        self._awaited = count
        # Checked after the count is published: a result appended since
        # either shows here or sees the count and sets the event.
        if len(self._results) < count:
            self._enough.wait()
        self._awaited = 0

    async def _open(self) -> SmtpSession:
        session = SmtpSession(server=self._server)
        error: BaseException | None = None
        try:
            await session.open()
        except SessionError as exc:
            error = exc
        except ConnectionLost:
            await session.close()
            raise
        # The server's status is a database write: off the loop, in a thread
        # whose connection is closed after.
        await asyncio.to_thread(_recorded, session, error)
        return session

    def close(self) -> None:
        if self._thread.is_alive():
            for _ in range(self.size):
                self._loop.call_soon_threadsafe(self._waiting.put_nowait, None)  # type: ignore[union-attr]
            self._thread.join()


def _recorded(session: SmtpSession, error: BaseException | None) -> None:
    from django.db import connection

    try:
        session_recorded(session, error)
    finally:
        connection.close()


def send_pool_for(
    dispatcher: Dispatcher, *, signer: Signer | None = None, window: int = 0
) -> SendPool[Any]:
    """The pool a batch sends through: sessions on one event loop for an
    SMTP relay (``window`` messages in flight at most), a thread per
    transport for every other delivery mode."""
    if dispatcher.delivery_mode == dispatcher.DeliveryMode.SMTP and not dispatcher.backup_directory:
        return SmtpSendPool(
            dispatcher.smtp_server, dispatcher.connections, signer=signer, window=window
        )
    return SendPool(lambda: transport_for(dispatcher), dispatcher.connections, signer=signer)
