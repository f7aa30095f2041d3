"""The one publishing boundary (``app["events"]``): every event for the CRM goes through here.

    await events.publish(tenant_id, type, data) -> envelope
        own transaction: appended to the tenant's event log and committed, then emitted.
    envelope = await events.append(conn, tenant_id, type, data)
        inside the caller's transaction; after the caller commits: ``await events.emit([envelope])``.
    envelopes = await events.append_many(conn, [(tenant_id, type, data), ...])
        the same for many events, in one multi-row insert.
    prepared = events.prepare([...]); ...; envelopes = prepared.envelopes(seqs)
        for writers appending with their own statements (``realtime/unit.py`` wraps all of these).

Envelope (a dict): ``{seq, tenant_id, type, ts, data}``; ``ts`` is ISO 8601 UTC with milliseconds and
a ``Z`` (``2025-01-31T12:00:00.123Z``). The Socket.IO event name is ``type``.

Group commit: concurrent ``publish()`` calls are coalesced by writer tasks into transactions (one
counter upsert for all tenants in the batch, one multi-row insert); each caller awaits its batch's
commit. Up to ``commits_in_flight`` batches are in flight, each on its own connection.
Each batch is numbered in advance (MariaDB, known tenants) or by the database: see ``turns.py``.
Either way a tenant's events are numbered in call order, and batches of other tenants go in parallel.
Committed batches are emitted in batch order (per tenant: seq order): to this node's clients as
soon as each is committed (the relay's ``deliver_now``), to other nodes by one emitter task,
overlapping the next inserts. A batch that fails otherwise after a later one was taken is not retried
(its callers get the error; later events take its seqs, so the log stays gapless). ``publish()``
returns once the event is durable; emission follows asynchronously, and a client that misses it (down,
reconnecting, slow) gets it again from the log with ``since``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import errors
from control_plane.db import events as events_db
from control_plane.db.engine import Database
from control_plane.db.sql import is_deadlock
from control_plane.realtime.envelopes import (  # noqa: F401  (importable from here)
    TENANT_RE,
    TYPE_RE,
    Envelope,
    NewEvent,
    PreparedEvents,
    check_names,
    encode_data,
    make_envelope,
    now_ms,
)
from control_plane.realtime.turns import Kept, Turn, count_down, count_up, take_batch

log = logging.getLogger(__name__)

MAX_BATCH = 1000
COMMITS_IN_FLIGHT = 3  # transactions in flight at once (each on its own connection)
COMMIT_ATTEMPTS = 3  # deadlock, lock wait timeout: the whole batch is retried


class Sink(Protocol):
    """Where committed envelopes go (the Socket.IO relay); ``None`` in processes without one.

    A sink may also have ``deliver_now(envelopes)``: the local fan-out, synchronous, called as soon
    as a batch is committed (in order), returning what ``await forward(...)`` must then carry to
    the other nodes, or None. The publisher's emitter task then only forwards, and local clients
    get an event one event-loop turn sooner."""

    async def broadcast(self, envelopes: Sequence[Envelope]) -> None: ...


class EventPublisher:
    """See the module docstring. ``persist=False`` (benchmarks only) numbers events in memory."""

    def __init__(
        self,
        db: Database | None,
        sink: Sink | None = None,
        *,
        persist: bool = True,
        max_batch: int = MAX_BATCH,
        commits_in_flight: int = COMMITS_IN_FLIGHT,
    ) -> None:
        if persist and db is None:
            raise ValueError("a database is needed unless persist=False")
        self.db = db
        self.sink = sink
        self.persist = persist
        self.max_batch = max_batch
        self._pending: collections.deque[tuple[str, str, dt.datetime, Any, str, asyncio.Future]] = (
            collections.deque()
        )
        self._wake = asyncio.Event()
        self._emit_queue: asyncio.Queue[list[Envelope] | None] = asyncio.Queue()
        self._memory_seq: dict[str, int] = {}
        if db is not None and db.is_sqlite:
            commits_in_flight = 1  # one writer at a time there anyway
        self._logs = [events_db.EventLogWriter(db) for _ in range(commits_in_flight)] if persist else []
        self._commits_in_flight = commits_in_flight
        # Tenants of batches whose counter rows are not locked yet (how many such batches each).
        self._sending: dict[str, int] = {}
        # Prediction (MariaDB): each tenant's next seq, known while this process is the only one
        # moving its counter; batches of known tenants take their seqs when taken and are sent at
        # once, without waiting for earlier ones (see _take_batch and append_predicted).
        self._predicts = False
        self._next: dict[str, tuple[int, int]] = {}  # tenant -> (next seq, the last mover's token)
        self._open: dict[int, tuple[set[str], bool]] = {}  # batches in flight: (tenants, predicted)
        self._open_count: dict[str, int] = {}  # per tenant: batches in flight
        self._predicted_open: dict[str, int] = {}  # per tenant: predicted batches in flight
        self._closers: list[asyncio.Future] = []  # woken whenever a batch finishes
        self._batches_taken = 0
        self._emit_next = 0  # the next batch (by number) to hand to the emitter
        self._finished: dict[int, list[Envelope]] = {}  # batches done, waiting for an earlier one
        self._writers_left = 0
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self.stats = {
            "batches": 0,
            "events": 0,
            "emitted": 0,
            "commit_s": 0.0,
            "predicted": 0,
            "mispredicted": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        n = self._commits_in_flight if self.persist else 1
        self._writers_left = n
        self._tasks = [
            asyncio.create_task(
                self._writer(self._logs[i] if self._logs else None), name=f"events-writer-{i}"
            )
            for i in range(n)
        ]
        self._tasks.append(asyncio.create_task(self._emitter(), name="events-emitter"))

    async def close(self) -> None:
        """Refuse new events, commit and emit what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for event_log in self._logs:
            await event_log.close()

    # -- the pinned API -------------------------------------------------------------------------

    async def publish(self, tenant_id: str, type: str, data: dict[str, Any]) -> Envelope:
        """Append to the tenant's log, commit (grouped with concurrent calls), then emit.
        Returns the envelope once durable."""
        if self._closing:
            raise errors.Unavailable("the event publisher is shutting down")
        check_names(tenant_id, type)
        data_json = encode_data(data)
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending.append((tenant_id, type, now_ms(), data, data_json, fut))
        self._wake.set()
        return await fut

    async def append(
        self, conn: AsyncConnection, tenant_id: str, type: str, data: dict[str, Any]
    ) -> Envelope:
        """Append inside the caller's transaction (``conn``). Emit it with :meth:`emit` once that
        transaction has committed; until then nobody sees it (a rollback takes its seq back)."""
        [envelope] = await self.append_many(conn, [(tenant_id, type, data)])
        return envelope

    async def append_many(self, conn: AsyncConnection, events: Sequence[NewEvent]) -> list[Envelope]:
        """:meth:`append` for many ``(tenant_id, type, data)`` at once: one counter upsert and one
        multi-row insert. Envelopes come back in input order (seqs in input order per tenant).
        An item may carry a 4th element, ``data``'s JSON text exactly as ``encode_data`` writes it:
        it is stored as given."""
        if not events:
            return []
        prepared = self.prepare(events)
        return prepared.envelopes(await events_db.append_events(conn, prepared.rows))

    def prepare(self, events: Sequence[NewEvent]) -> PreparedEvents:
        """Events for a caller that appends them itself, with its own statements in one round trip
        (``db.inbound.store_fast``): checked, encoded, stamped; ``envelopes(seqs)`` afterwards."""
        prepared = PreparedEvents(events)
        for tenant_id in prepared.tenants():
            self._next.pop(tenant_id, None)  # its counter moves outside the publisher: read it again
        return prepared

    async def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Push envelopes that are already committed (from :meth:`append`) to subscribers."""
        envs = [e if isinstance(e, Envelope) else self._rewrap(e) for e in envelopes]
        if envs:
            self._hand_over(envs)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _rewrap(env: dict[str, Any]) -> Envelope:
        copy = Envelope(env)
        copy.data_json = encode_data(env["data"])
        return copy

    async def _writer(self, event_log: events_db.EventLogWriter | None) -> None:
        """One of ``commits_in_flight`` writers.

        A tenant whose counter this process knows (``_next``) has its events numbered when the
        batch is taken, and the batch goes at once, in one round trip that checks the numbering
        in the database (``append_predicted``), holding its tenants back only until it is written:
        several batches of the same tenants are in flight at once, and the database only has to
        commit them. Otherwise (a tenant not seen yet, or after a misprediction) the batch is
        numbered by the database (``append``) and holds its tenants back from later batches until
        its counter rows are locked: a later batch with one of them is sent after that, so the
        database numbers a tenant's events in call order (the later upsert waits for the row
        lock), while batches of other tenants go in parallel; the counters it reads make the
        tenants known."""
        try:
            while True:
                batch, seqs, writer, after = self._take_batch()
                if not batch:
                    if self._closing and not self._pending:
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                number = self._batches_taken
                self._batches_taken += 1
                tenants = {entry[0] for entry in batch}
                if self.persist:
                    self._opened(number, tenants, seqs is not None)
                turn = Turn(self, tenants, writer)
                envelopes: list[Envelope | None] = []
                try:
                    envelopes = await self._commit_batch(batch, number, event_log, turn, seqs, after)
                finally:
                    turn.release()
                    self._done(number, batch, envelopes)
        finally:
            self._writers_left -= 1
            if self._writers_left == 0:
                self._emit_queue.put_nowait(None)

    def _take_batch(self) -> tuple[list, list[int] | None, int, dict[str, int]]:
        """Up to ``max_batch`` pending events (see ``turns.take_batch``) and its writer token."""
        writer = random.getrandbits(62) + 1
        if not self.persist:
            n = min(len(self._pending), self.max_batch)
            return [self._pending.popleft() for _ in range(n)], None, writer, {}
        batch, seqs, after, self._pending = take_batch(
            self._pending,
            self.max_batch,
            writer,
            sending=self._sending,
            known=self._next,
            predicted_open=self._predicted_open,
            predict=self._predicts,
        )
        return batch, seqs, writer, after

    # -- bookkeeping of batches in flight -------------------------------------------------------

    def _opened(self, number: int, tenants: set[str], predicted: bool) -> None:
        self._open[number] = (tenants, predicted)
        count_up(self._open_count, tenants)
        if predicted:
            count_up(self._predicted_open, tenants)

    def _closed(self, number: int) -> None:
        tenants, predicted = self._open.pop(number)
        count_down(self._open_count, tenants)
        if predicted:
            count_down(self._predicted_open, tenants)
        closers, self._closers = self._closers, []
        for fut in closers:
            if not fut.done():
                fut.set_result(None)
        self._wake.set()  # tenants held back for this batch may go now

    def _let_go(self, tenants: set[str], last: dict[str, int] | None, writer: int) -> None:
        """A batch's counter rows are locked (``last``: the counters as it leaves them, if known)."""
        count_down(self._sending, tenants)
        if last is not None:
            open_count = self._open_count
            for tenant_id, value in last.items():
                if open_count.get(tenant_id) == 1:  # only this batch in flight: the next seq is known
                    self._next[tenant_id] = (value + 1, writer)
        self._wake.set()  # events held back for these tenants may go now

    async def _wait_for_earlier(self, number: int, tenants: set[str]) -> None:
        """Until every batch taken before ``number`` with one of ``tenants`` has finished."""
        while any(n < number and not tenants.isdisjoint(ts) for n, (ts, _p) in self._open.items()):
            fut = asyncio.get_running_loop().create_future()
            self._closers.append(fut)
            await fut

    # -- committing -----------------------------------------------------------------------------

    async def _commit_batch(
        self,
        batch: list,
        number: int,
        event_log: events_db.EventLogWriter | None,
        turn: Turn,
        seqs: list[int] | None = None,
        after: dict[str, int] | None = None,
    ) -> list[Envelope | None]:
        if seqs is not None:
            assert event_log is not None and after is not None
            try:
                return list(await self._commit_predicted(batch, seqs, event_log, turn.writer, after, turn))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                for tenant_id in turn.tenants:
                    self._next.pop(tenant_id, None)  # read the counters again
                if not isinstance(exc, events_db.CounterMoved | IntegrityError) and not is_deadlock(exc):
                    # The database is down, or the connection went mid-COMMIT (the outcome is
                    # unknown): every caller of the batch gets the error.
                    log.warning("event batch of %d failed: %s", len(batch), exc)
                    self._fail(batch, exc)
                    return []
                # Rolled back: number it the database's way, in turn (after every earlier batch of
                # its tenants). No later batch of its tenants can have committed meanwhile: each
                # was predicted after this one (or after one predicted after it), and the check
                # lets a batch through only once the batch it follows has committed.
                turn.hold_again()
                await self._wait_for_earlier(number, turn.tenants)
                self.stats["mispredicted"] += 1
                log.debug("event batch of %d renumbered after %s", len(batch), exc)
        try:
            return list(await self._commit(batch, number, event_log, turn))
        except asyncio.CancelledError:
            raise
        except IntegrityError as exc:
            if turn.held:
                # One bad event (a tenant deleted meanwhile, or one that never existed) must not
                # fail the others: commit each tenant's events on their own, still in turn.
                return await self._commit_per_tenant(batch, number, event_log)
            log.warning("event batch of %d failed: %s", len(batch), exc)
            self._fail(batch, exc)
        except Exception as exc:
            log.warning("event batch of %d failed: %s", len(batch), exc)
            self._fail(batch, exc)
        return []

    async def _commit_predicted(
        self,
        batch: list,
        seqs: list[int],
        event_log: events_db.EventLogWriter,
        writer: int,
        after: dict[str, int],
        turn: Turn,
    ) -> list[Envelope]:
        started = time.monotonic()
        await event_log.append_predicted(
            [(tenant_id, type_, ts, data_json) for tenant_id, type_, ts, _data, data_json, _f in batch],
            seqs,
            writer=writer,
            after=after,
            on_sent=turn.release,
        )
        self.stats["commit_s"] += time.monotonic() - started
        self.stats["predicted"] += 1
        return [
            make_envelope(tenant_id, seq, type_, ts, data, data_json)
            for (tenant_id, type_, ts, data, data_json, _f), seq in zip(batch, seqs, strict=True)
        ]

    async def _commit_per_tenant(
        self, batch: list, number: int, event_log: events_db.EventLogWriter | None
    ) -> list[Envelope | None]:
        groups: dict[str, list] = {}
        for entry in batch:
            groups.setdefault(entry[0], []).append(entry)
        by_entry: dict[int, Envelope] = {}
        for tenant_id, group in groups.items():
            try:
                for entry, env in zip(
                    group, await self._commit(group, number, event_log, Kept()), strict=True
                ):
                    by_entry[id(entry)] = env
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events for tenant=%s failed: %s", tenant_id, exc)
                self._fail(group, exc)
        return [by_entry.get(id(entry)) for entry in batch]

    @staticmethod
    def _fail(batch: list, exc: BaseException) -> None:
        for *_, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    def _done(self, number: int, batch: list, envelopes: list[Envelope | None]) -> None:
        """Resolve the batch's callers now (durable); hand its envelopes to the emitter in batch order."""
        committed = []
        for (*_, fut), env in zip(batch, envelopes, strict=False):  # [] when it failed
            if env is None:
                continue
            committed.append(env)
            if not fut.done():
                fut.set_result(env)
        for *_, fut in batch:  # cancelled mid-commit: the outcome is unknown to us
            if not fut.done():
                fut.set_exception(errors.Unavailable("the event publisher stopped before the commit"))
        self.stats["batches"] += 1
        self.stats["events"] += len(committed)
        if self.persist:
            self._closed(number)
        self._finished[number] = committed
        while self._emit_next in self._finished:
            ready = self._finished.pop(self._emit_next)
            self._emit_next += 1
            if ready:
                self._hand_over(ready)

    def _hand_over(self, envelopes: list[Envelope]) -> None:
        """Committed envelopes, in order: delivered to local clients now where the sink can
        (``deliver_now``), forwarded to other nodes by the emitter task; else all by the emitter."""
        deliver_now = getattr(self.sink, "deliver_now", None)
        if deliver_now is None:
            self._emit_queue.put_nowait(envelopes)
            return
        try:
            onward = deliver_now(envelopes)
        except Exception:  # clients catch up from the log on their next event
            log.exception("emitting %d events failed", len(envelopes))
            onward = None
        self.stats["emitted"] += len(envelopes)
        if onward:
            self._emit_queue.put_nowait(onward)

    async def _commit(
        self, batch: list, number: int, event_log: events_db.EventLogWriter | None, turn: Turn | Kept
    ) -> list[Envelope]:
        rows = [(tenant_id, type_, ts, data_json) for tenant_id, type_, ts, _data, data_json, _f in batch]
        if not self.persist:
            seqs = []
            for tenant_id, *_ in rows:
                seq = self._memory_seq.get(tenant_id, 0) + 1
                self._memory_seq[tenant_id] = seq
                seqs.append(seq)
            turn.release()
        else:
            assert event_log is not None
            started = time.monotonic()
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                try:
                    seqs = await event_log.append(rows, on_locked=turn.release, writer=turn.writer)
                    self._predicts = event_log.predicts
                    break
                except DBAPIError as exc:
                    if attempt == COMMIT_ATTEMPTS or not is_deadlock(exc):
                        raise
                    if not turn.held:
                        # Rolled back after its tenants were let go. Retrying is in order only if
                        # no batch was taken since (it would number after theirs).
                        assert isinstance(turn, Turn)
                        if self._batches_taken != number + 1:
                            raise
                        turn.hold_again()
                    log.info(
                        "event batch retried after %s (%d attempts left)", exc.orig, COMMIT_ATTEMPTS - attempt
                    )
            self.stats["commit_s"] += time.monotonic() - started
        return [
            make_envelope(tenant_id, seq, type_, ts, data, data_json)
            for (tenant_id, type_, ts, data, data_json, _f), seq in zip(batch, seqs, strict=True)
        ]

    async def _emitter(self) -> None:
        while True:
            envelopes = await self._emit_queue.get()  # envelopes, or (deliver_now) what to forward
            stop = envelopes is None
            envelopes = envelopes or []
            while not self._emit_queue.empty():  # coalesce what piled up while we were emitting
                more = self._emit_queue.get_nowait()
                if more is None:
                    stop = True
                else:
                    envelopes.extend(more)
            inline = hasattr(self.sink, "deliver_now")  # then these were delivered here: forward
            if envelopes and self.sink is not None:
                try:
                    sink: Any = self.sink  # forward() comes with deliver_now (see Sink)
                    await (sink.forward if inline else sink.broadcast)(envelopes)
                except asyncio.CancelledError:
                    raise
                except Exception:  # clients catch up from the log on their next event
                    log.exception("emitting %d events failed", len(envelopes))
            if not inline:
                self.stats["emitted"] += len(envelopes)
            if stop:
                return
