"""Group commit: the one batching loop behind every writer that stores what many callers hand it.

    writer = GroupCommit(store, name="inbound", max_batch=256)
    writer.start()
    await writer.submit(item)      # returns once ``item``'s batch has committed (raises if it failed)
    writer.put(item)               # the same without waiting: kept and retried until stored
    await writer.flush()           # everything queued so far is stored
    await writer.stop()

A single task takes everything queued since it last looked (up to ``max_batch`` by weight) and calls
``store(batch)``, which stores it in ONE transaction (and emits its events after the commit). No
timer: while one batch commits, the next one gathers; under light load a batch is one item.
``min_interval_s`` spaces commits while busy (a lone item after a quiet spell goes at once).
One task, so batches commit one after another in queue order: whatever one caller hands over
(a contact's messages, a send's outcome before its ack) is stored, numbered and emitted in order.

Failures (``sql.retry_on_deadlock``, the one retry helper): a deadlock or lock wait timeout (InnoDB
rolled it back) and a lost connection are tried again at once, a few times (safe: the writers'
storage is idempotent, per provider message id, per outcome, should a lost COMMIT have gone
through). Then:
- the database is down: waiting items (``submit``) fail with ``errors.Unavailable``
  (``database_unavailable``); kept items (``put``) go back to the front of the queue and the writer
  waits (backoff) before trying again;
- anything else: the batch is stored again one item at a time, so one poisonous item cannot fail
  the others; an item that fails alone fails its waiter (``storage_failed``) or, when kept, is
  tried ``KEPT_ATTEMPTS`` times and then dropped (logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from control_plane import errors
from control_plane.db.sql import is_db_outage, retry_on_deadlock

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3  # per transaction, for deadlocks and lost connections
KEPT_ATTEMPTS = 5  # a kept item failing on its own (not an outage) is dropped after this many
BACKOFF_MAX_S = 5.0


async def _nothing_held() -> None:
    """A writer without a held connection: nothing to forget after a lost one."""


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future[None] | None  # None: kept (put), retried until stored
    weight: int
    failures: int = 0


class GroupCommit(Generic[T]):
    """See the module docstring. ``store(batch)`` stores a list of items in one transaction;
    ``weight(item)`` counts towards ``max_batch`` and ``pending`` (default 1 per item)."""

    def __init__(
        self,
        store: Callable[[list[T]], Awaitable[None]],
        *,
        name: str,
        max_batch: int = 256,
        min_interval_s: float = 0.0,
        weight: Callable[[T], int] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self.name = name
        self.max_batch = max_batch
        self.min_interval_s = min_interval_s
        self._weight = weight
        self._on_lost = on_lost
        self._queue: deque[_Entry[T]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pending = 0  # weight queued or being stored, not yet committed
        self.batches = 0
        self.failed_batches = 0
        self.max_seen = 0  # the largest batch (items)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Store what is queued (up to ``grace_s``), then stop; what is left is not stored (waiters
        get ``errors.Unavailable``; kept items are dropped, logged)."""
        if self._task is not None:
            if grace_s > 0 and not self._task.done():
                await self.flush(grace_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        dropped = 0
        while self._queue:
            entry = self._queue.popleft()
            dropped += entry.future is None
            self.pending -= entry.weight
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(errors.Unavailable("shutting down; retry later"))
        if dropped:
            log.warning("%s: stopped with %d item(s) not stored", self.name, dropped)
        self._idle.set()

    # -- handing over ---------------------------------------------------------------------------

    def put(self, item: T) -> None:
        """Queue ``item`` for the next batch; it is kept (retried) until stored."""
        self._enqueue(_Entry(item, None, self._weight(item) if self._weight else 1))

    async def submit(self, item: T) -> None:
        """Store ``item``; returns once its batch committed. Raises ``errors.Unavailable``."""
        if not self.running:
            raise errors.Unavailable(f"{self.name} is not running; retry later")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Entry(item, future, self._weight(item) if self._weight else 1))
        await future

    def _enqueue(self, entry: _Entry[T]) -> None:
        self._queue.append(entry)
        self.pending += entry.weight
        self._idle.clear()
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def flush(self, within_s: float = 10.0) -> bool:
        """Waits until everything queued so far is stored (or dropped); False after ``within_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
            return True
        except TimeoutError:
            return False

    async def wait_below(self, limit: int, within_s: float = 1.0) -> None:
        """Backpressure: returns once ``pending`` is at most ``limit`` (or after ``within_s``)."""
        deadline = time.monotonic() + within_s
        while self.pending > limit and time.monotonic() < deadline:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        last_commit = 0.0
        backoff = 0.05
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = last_commit + self.min_interval_s - time.monotonic()
            if wait > 0 and self.pending < self.max_batch:
                await asyncio.sleep(wait)
            last_commit = time.monotonic()
            batch = self._take()
            try:
                back = await self._commit(batch)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))
                raise
            if back:  # kept items not stored: first in line again, in their order
                self._queue.extendleft(reversed(back))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                backoff = 0.05

    def _take(self) -> list[_Entry[T]]:
        queue, weight = self._queue, 0
        batch: list[_Entry[T]] = []
        while queue and (not batch or weight + queue[0].weight <= self.max_batch):
            entry = queue.popleft()
            batch.append(entry)
            weight += entry.weight
        self.max_seen = max(self.max_seen, len(batch))
        return batch

    async def _commit(self, batch: list[_Entry[T]]) -> list[_Entry[T]]:
        """Store ``batch`` (see the module docstring); returns the kept items to try again."""
        try:
            await retry_on_deadlock(
                lambda: self._store([e.item for e in batch]),
                attempts=ATTEMPTS,
                backoff_s=0,
                what=f"{self.name} batch",
                lost=self._on_lost or _nothing_held,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed_batches += 1
            if self._on_lost is not None:
                await self._on_lost()
            return await self._failed(batch, exc)
        self.batches += 1
        for entry in batch:
            self._settle(entry, None)
        self._progress.set()
        return []

    async def _failed(self, batch: list[_Entry[T]], exc: Exception) -> list[_Entry[T]]:
        if is_db_outage(exc):
            log.warning("%s: batch of %d not stored, database unavailable: %s", self.name, len(batch), exc)
            unavailable = errors.Unavailable(
                "the database is unavailable; retry later", code="database_unavailable"
            )
            return self._requeue_kept(batch, unavailable)
        if len(batch) > 1:
            log.warning(
                "%s: batch of %d failed (%s); storing it one item at a time",
                self.name,
                len(batch),
                type(exc).__name__,
            )
            back: list[_Entry[T]] = []
            for entry in batch:
                if back and entry.future is None:
                    back.append(entry)  # after a kept item that failed: not before it
                else:
                    back += await self._commit([entry])
            return back
        [entry] = batch
        log.error("%s: item not stored", self.name, exc_info=exc)
        entry.failures += 1
        if entry.future is None and entry.failures < KEPT_ATTEMPTS:
            return [entry]
        self._settle(entry, errors.Unavailable("storage failed; retry later", code="storage_failed"))
        return []

    def _requeue_kept(self, batch: list[_Entry[T]], exc: Exception) -> list[_Entry[T]]:
        """The kept entries (to try again); the waiters fail with ``exc``."""
        for entry in batch:
            if entry.future is not None:
                self._settle(entry, exc)
        return [e for e in batch if e.future is None]

    def _settle(self, entry: _Entry[T], exc: Exception | None) -> None:
        self.pending -= entry.weight
        if entry.future is None:
            if exc is not None:
                log.error("%s: a kept item was dropped: %s", self.name, exc)
            return
        if not entry.future.done():
            if exc is None:
                entry.future.set_result(None)
            else:
                entry.future.set_exception(exc)
