"""The one publishing boundary (``app["events"]``): every event for the CRM goes through here.

    await events.publish(tenant_id, type, data) -> envelope
        own transaction: appended to the tenant's event log and committed, then emitted.
    envelope = await events.append(conn, tenant_id, type, data)
        inside the caller's transaction; after the caller commits: ``await events.emit([envelope])``.
    envelopes = await events.append_many(conn, [(tenant_id, type, data), ...])
        the same for many events, in one multi-row insert.

Envelope (a dict): ``{seq, tenant_id, type, ts, data}``; ``ts`` is ISO 8601 UTC with milliseconds and
a ``Z`` (``2025-01-31T12:00:00.123Z``). The Socket.IO event name is ``type``.

Group commit: concurrent ``publish()`` calls are coalesced by writer tasks into transactions (one
counter upsert for all tenants in the batch, one multi-row insert, one round trip); each caller awaits
its batch's commit. Up to ``commits_in_flight`` batches are in flight, each on its own connection.
A batch holds its tenants back from later batches only until its counter upsert has returned (their
counter rows are then locked by its transaction): a later batch with one of them is sent after that,
so its upsert waits in the database for the earlier commit, and a tenant's events are numbered in
call order, while its statements overlap the earlier COMMIT. Batches of other tenants go in parallel.
Committed batches are emitted in batch order (per tenant: seq order) by one emitter task,
overlapping the next inserts. A batch that fails after a later one was taken is not retried (its
callers get the error; later events take its seqs, so the log stays gapless). ``publish()`` returns
once the event is durable; emission follows asynchronously, and a client that misses it (down,
reconnecting, slow) gets it again from the log with ``since``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import enum
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import errors
from control_plane.db import events as events_db
from control_plane.db.engine import Database, utcnow
from control_plane.realtime.event_types import FORBIDDEN_KEYS

log = logging.getLogger(__name__)

TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
TENANT_RE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")
MAX_BATCH = 1000
COMMITS_IN_FLIGHT = 3  # transactions in flight at once (each on its own connection)
RETRYABLE_MYSQL_CODES = {1213, 1205}  # deadlock, lock wait timeout: the whole batch is retried
COMMIT_ATTEMPTS = 3


class Envelope(dict):
    """``{seq, tenant_id, type, ts, data}``; keeps the JSON text of ``data`` so it is encoded once."""

    __slots__ = ("data_json",)
    data_json: str


class Sink(Protocol):
    """Where committed envelopes go (the Socket.IO relay); ``None`` in processes without one."""

    async def broadcast(self, envelopes: Sequence[Envelope]) -> None: ...


def format_ts(ts: dt.datetime) -> str:
    """Naive UTC datetime -> ``2025-01-31T12:00:00.123Z``."""
    if ts.tzinfo is None and ts.year >= 1000:  # isoformat is C and several times faster than strftime
        return ts.isoformat(timespec="milliseconds") + "Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _now_ms() -> dt.datetime:
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # stored == sent, to the ms


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return value.hex
    raise TypeError(f"event data: {type(value).__name__} is not JSON serializable")


def encode_data(data: dict[str, Any]) -> str:
    """Validate an event payload and return its JSON text."""
    if not isinstance(data, dict):
        raise TypeError("event data must be a dict")
    leaked = FORBIDDEN_KEYS.intersection(data)
    if leaked:
        raise ValueError(f"event data must not carry secrets: {sorted(leaked)}")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def check_names(tenant_id: str, type_: str) -> None:
    if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    if not isinstance(type_, str) or len(type_) > 64 or not TYPE_RE.match(type_):
        raise ValueError(f"invalid event type {type_!r}; use dotted lower-case names like 'message.sent'")


def make_envelope(tenant_id: str, seq: int, type_: str, ts: dt.datetime, data: Any, data_json: str
                  ) -> Envelope:
    env = Envelope(seq=seq, tenant_id=tenant_id, type=type_, ts=format_ts(ts), data=data)
    env.data_json = data_json
    return env


class _Turn:
    """A batch's tenants, held back from later batches until its counter rows are locked."""

    __slots__ = ("publisher", "tenants", "held")

    def __init__(self, publisher: EventPublisher, tenants: set[str]) -> None:
        self.publisher, self.tenants, self.held = publisher, tenants, True
        publisher._sending |= tenants

    def release(self) -> None:
        if self.held:
            self.held = False
            self.publisher._sending -= self.tenants
            self.publisher._wake.set()  # events held back for these tenants may go now

    def hold_again(self) -> None:
        self.held = True
        self.publisher._sending |= self.tenants


class _Kept:
    """A turn that stays held (the per-tenant fallback runs its groups one after another in it)."""

    held = True

    def release(self) -> None:
        pass


def _retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return isinstance(exc, DBAPIError) and code in RETRYABLE_MYSQL_CODES


class EventPublisher:
    """See the module docstring. ``persist=False`` (benchmarks only) numbers events in memory."""

    def __init__(self, db: Database | None, sink: Sink | None = None, *, persist: bool = True,
                 max_batch: int = MAX_BATCH, commits_in_flight: int = COMMITS_IN_FLIGHT) -> None:
        if persist and db is None:
            raise ValueError("a database is needed unless persist=False")
        self.db = db
        self.sink = sink
        self.persist = persist
        self.max_batch = max_batch
        self._pending: collections.deque[tuple[str, str, dt.datetime, Any, str, asyncio.Future]] = \
            collections.deque()
        self._wake = asyncio.Event()
        self._emit_queue: asyncio.Queue[list[Envelope] | None] = asyncio.Queue()
        self._memory_seq: dict[str, int] = {}
        if db is not None and db.is_sqlite:
            commits_in_flight = 1  # one writer at a time there anyway
        self._logs = [events_db.EventLogWriter(db) for _ in range(commits_in_flight)] if persist else []
        self._commits_in_flight = commits_in_flight
        self._sending: set[str] = set()  # tenants of batches whose counter rows are not locked yet
        self._batches_taken = 0
        self._emit_next = 0  # the next batch (by number) to hand to the emitter
        self._finished: dict[int, list[Envelope]] = {}  # batches done, waiting for an earlier one
        self._writers_left = 0
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self.stats = {"batches": 0, "events": 0, "emitted": 0, "commit_s": 0.0}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        n = self._commits_in_flight if self.persist else 1
        self._writers_left = n
        self._tasks = [asyncio.create_task(self._writer(self._logs[i] if self._logs else None),
                                           name=f"events-writer-{i}") for i in range(n)]
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
        self._pending.append((tenant_id, type, _now_ms(), data, data_json, fut))
        self._wake.set()
        return await fut

    async def append(self, conn: AsyncConnection, tenant_id: str, type: str,
                     data: dict[str, Any]) -> Envelope:
        """Append inside the caller's transaction (``conn``). Emit it with :meth:`emit` once that
        transaction has committed; until then nobody sees it (a rollback takes its seq back)."""
        check_names(tenant_id, type)
        data_json = encode_data(data)
        ts = _now_ms()
        [seq] = await events_db.append_events(conn, [(tenant_id, type, ts, data_json)])
        return make_envelope(tenant_id, seq, type, ts, data, data_json)

    async def append_many(self, conn: AsyncConnection, events: Sequence[tuple[str, str, dict[str, Any]]], *,
                          before: list[str] | None = None) -> list[Envelope]:
        """:meth:`append` for many ``(tenant_id, type, data)`` at once: one counter upsert and one
        multi-row insert. Envelopes come back in input order (seqs in input order per tenant).
        ``before``: raw statements to send in the same round trip (see ``events_db.append_events``).
        An item may carry a 4th element, ``data``'s JSON text exactly as ``encode_data`` writes it
        (the webhook ingester writes ``message.received``'s itself, faster): it is stored as given."""
        if not events:
            return []
        ts = _now_ms()
        prepared = []
        for event in events:
            tenant_id, type_, data = event[0], event[1], event[2]
            check_names(tenant_id, type_)
            prepared.append((tenant_id, type_, data, event[3] if len(event) > 3 else encode_data(data)))
        seqs = await events_db.append_events(conn, [(t, ty, ts, dj) for t, ty, _d, dj in prepared], before=before)
        return [make_envelope(t, seq, ty, ts, d, dj) for (t, ty, d, dj), seq in zip(prepared, seqs)]

    async def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Push envelopes that are already committed (from :meth:`append`) to subscribers."""
        envs = [e if isinstance(e, Envelope) else self._rewrap(e) for e in envelopes]
        if envs:
            self._emit_queue.put_nowait(envs)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _rewrap(env: dict[str, Any]) -> Envelope:
        copy = Envelope(env)
        copy.data_json = encode_data(env["data"])
        return copy

    async def _writer(self, event_log: events_db.EventLogWriter | None) -> None:
        """One of ``commits_in_flight`` writers. A batch holds its tenants back from later batches
        only until its counter rows are locked: a later batch with one of them is sent after that,
        so the database numbers a tenant's events in call order (the later upsert waits for the
        row lock), while batches of other tenants go in parallel."""
        try:
            while True:
                batch = self._take_batch()
                if not batch:
                    if self._closing and not self._pending:
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                number = self._batches_taken
                self._batches_taken += 1
                turn = _Turn(self, {entry[0] for entry in batch})
                envelopes: list[Envelope | None] = []
                try:
                    envelopes = await self._commit_batch(batch, number, event_log, turn)
                finally:
                    turn.release()
                    self._done(number, batch, envelopes)
        finally:
            self._writers_left -= 1
            if self._writers_left == 0:
                self._emit_queue.put_nowait(None)

    def _take_batch(self) -> list:
        """Up to ``max_batch`` pending events of tenants not being sent, keeping each tenant's order."""
        pending, sending = self._pending, self._sending
        if not sending:
            n = min(len(pending), self.max_batch)
            return [pending.popleft() for _ in range(n)]
        batch, held = [], collections.deque()
        while pending and len(batch) < self.max_batch:
            entry = pending.popleft()
            (held if entry[0] in sending else batch).append(entry)
        held.extend(pending)
        self._pending = held
        return batch

    async def _commit_batch(self, batch: list, number: int, event_log: events_db.EventLogWriter | None,
                            turn: _Turn) -> list[Envelope | None]:
        try:
            return await self._commit(batch, number, event_log, turn)
        except asyncio.CancelledError:
            raise
        except IntegrityError as exc:
            if turn.held:
                # One bad event (a tenant deleted meanwhile, or one that never existed) must not
                # fail the others: commit each tenant's events on their own, still in turn.
                return await self._commit_per_tenant(batch, number, event_log)
            log.warning("event batch of %d failed: %s", len(batch), exc)
            self._fail(batch, exc)
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it (db down)
            log.warning("event batch of %d failed: %s", len(batch), exc)
            self._fail(batch, exc)
        return []

    async def _commit_per_tenant(self, batch: list, number: int, event_log: events_db.EventLogWriter | None
                                 ) -> list[Envelope | None]:
        groups: dict[str, list] = {}
        for entry in batch:
            groups.setdefault(entry[0], []).append(entry)
        by_entry: dict[int, Envelope] = {}
        for tenant_id, group in groups.items():
            try:
                for entry, env in zip(group, await self._commit(group, number, event_log, _Kept())):
                    by_entry[id(entry)] = env
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this tenant's callers get it, the others go on
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
        for (*_, fut), env in zip(batch, envelopes):
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
        self._finished[number] = committed
        while self._emit_next in self._finished:
            ready = self._finished.pop(self._emit_next)
            self._emit_next += 1
            if ready:
                self._emit_queue.put_nowait(ready)

    async def _commit(self, batch: list, number: int, event_log: events_db.EventLogWriter | None,
                      turn: _Turn | _Kept) -> list[Envelope]:
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
                    seqs = await event_log.append(rows, on_locked=turn.release)
                    break
                except DBAPIError as exc:
                    if attempt == COMMIT_ATTEMPTS or not _retryable(exc):
                        raise
                    if not turn.held:
                        # Rolled back after its tenants were let go. Retrying is in order only if
                        # no batch was taken since (it would number after theirs).
                        assert isinstance(turn, _Turn)
                        if self._batches_taken != number + 1:
                            raise
                        turn.hold_again()
                    log.info("event batch retried after %s (%d attempts left)", exc.orig,
                             COMMIT_ATTEMPTS - attempt)
            self.stats["commit_s"] += time.monotonic() - started
        return [make_envelope(tenant_id, seq, type_, ts, data, data_json)
                for (tenant_id, type_, ts, data, data_json, _f), seq in zip(batch, seqs)]

    async def _emitter(self) -> None:
        while True:
            envelopes = await self._emit_queue.get()
            stop = envelopes is None
            envelopes = envelopes or []
            while not self._emit_queue.empty():  # coalesce what piled up while we were emitting
                more = self._emit_queue.get_nowait()
                if more is None:
                    stop = True
                else:
                    envelopes.extend(more)
            if envelopes and self.sink is not None:
                try:
                    await self.sink.broadcast(envelopes)
                except asyncio.CancelledError:
                    raise
                except Exception:  # clients catch up from the log on their next event
                    log.exception("emitting %d events failed", len(envelopes))
            self.stats["emitted"] += len(envelopes)
            if stop:
                return
