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
counter upsert for all tenants in the batch, one multi-row insert); each caller awaits its batch's
commit. Up to ``commits_in_flight`` batches are in flight, each on its own connection.
- Numbered in advance (MariaDB; the common case): once this process has read a tenant's counter, it
  numbers the tenant's events itself when it takes a batch, and sends the batch at once, in ONE
  round trip that the database checks (``EventLogWriter.append_predicted``: each counter must have
  been moved last by the batch the seqs were predicted after). The batch holds its tenants back
  only until its statements are written, so the next batch of theirs reaches the database after
  it; several batches of the same tenants are in flight together, and the row locks on the
  counters make the database commit them in order. A batch that fails the check (another node or
  a caller's transaction moved the counter, an earlier batch failed or reached the database late)
  is rolled back, waits for every earlier batch of its tenants, and is numbered the database's way.
- Numbered by the database (a tenant not known yet, after a failed check, SQLite, MySQL): a batch
  holds its tenants back from later batches until its counter upsert has returned (their counter
  rows are then locked by its transaction): a later batch with one of them is sent after that, so
  its upsert waits in the database for the earlier commit. The counters it reads make its tenants
  known again.
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
import enum
import logging
import random
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import errors
from control_plane.compact_json import dict_encoder
from control_plane.db import events as events_db
from control_plane.db.engine import Database, utcnow
from control_plane.events import FORBIDDEN_KEYS, format_ts

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
    """Where committed envelopes go (the Socket.IO relay); ``None`` in processes without one.

    A sink may also have ``deliver_now(envelopes)``: the local fan-out, synchronous, called as soon
    as a batch is committed (in order), returning what ``await forward(...)`` must then carry to
    the other nodes, or None. The publisher's emitter task then only forwards, and local clients
    get an event one event-loop turn sooner."""

    async def broadcast(self, envelopes: Sequence[Envelope]) -> None: ...


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


_encode = dict_encoder(_json_default)


def encode_data(data: dict[str, Any]) -> str:
    """Validate an event payload and return its JSON text."""
    if not isinstance(data, dict):
        raise TypeError("event data must be a dict")
    leaked = FORBIDDEN_KEYS.intersection(data)
    if leaked:
        raise ValueError(f"event data must not carry secrets: {sorted(leaked)}")
    return _encode(data)


def check_names(tenant_id: str, type_: str) -> None:
    if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    if not isinstance(type_, str) or len(type_) > 64 or not TYPE_RE.match(type_):
        raise ValueError(f"invalid event type {type_!r}; use dotted lower-case names like 'message.sent'")


def make_envelope(
    tenant_id: str, seq: int, type_: str, ts: dt.datetime, data: Any, data_json: str
) -> Envelope:
    env = Envelope(seq=seq, tenant_id=tenant_id, type=type_, ts=format_ts(ts), data=data)
    env.data_json = data_json
    return env


class _Turn:
    """A batch's tenants, held back from later batches until its counter rows are locked."""

    __slots__ = ("held", "publisher", "tenants", "writer")

    def __init__(self, publisher: EventPublisher, tenants: set[str], writer: int) -> None:
        self.publisher, self.tenants, self.held, self.writer = publisher, tenants, False, writer
        self.hold_again()

    def release(self, last: dict[str, int] | None = None) -> None:
        """Let later batches of these tenants go (``last``: their counters, where known)."""
        if self.held:
            self.held = False
            self.publisher._let_go(self.tenants, last, self.writer)

    def hold_again(self) -> None:
        if not self.held:
            self.held = True
            _count_up(self.publisher._sending, self.tenants)


class _Kept:
    """A turn that stays held (the per-tenant fallback runs its groups one after another in it)."""

    held = True
    writer = None  # its groups are numbered by the database

    def release(self, last: dict[str, int] | None = None) -> None:
        pass


def _count_up(counts: dict[str, int], keys: set[str]) -> None:
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


def _count_down(counts: dict[str, int], keys: set[str]) -> None:
    """Each key once less; a key at zero goes (``key in counts`` means: at least one)."""
    for key in keys:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


def _retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return isinstance(exc, DBAPIError) and code in RETRYABLE_MYSQL_CODES


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
        self._pending.append((tenant_id, type, _now_ms(), data, data_json, fut))
        self._wake.set()
        return await fut

    async def append(
        self, conn: AsyncConnection, tenant_id: str, type: str, data: dict[str, Any]
    ) -> Envelope:
        """Append inside the caller's transaction (``conn``). Emit it with :meth:`emit` once that
        transaction has committed; until then nobody sees it (a rollback takes its seq back)."""
        check_names(tenant_id, type)
        data_json = encode_data(data)
        ts = _now_ms()
        self._next.pop(tenant_id, None)  # its counter moves outside the publisher: read it again
        [seq] = await events_db.append_events(conn, [(tenant_id, type, ts, data_json)])
        return make_envelope(tenant_id, seq, type, ts, data, data_json)

    async def append_many(
        self,
        conn: AsyncConnection,
        events: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        before: list[str] | None = None,
    ) -> list[Envelope]:
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
            self._next.pop(tenant_id, None)  # its counter moves outside the publisher: read it again
        seqs = await events_db.append_events(
            conn, [(t, ty, ts, dj) for t, ty, _d, dj in prepared], before=before
        )
        return [make_envelope(t, seq, ty, ts, d, dj) for (t, ty, d, dj), seq in zip(prepared, seqs)]

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
                turn = _Turn(self, tenants, writer)
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
        """Up to ``max_batch`` pending events, keeping each tenant's order; their predicted seqs
        (None: the database numbers them); the batch's token (``writer``) and, when predicted, the
        token of the batch each tenant's seqs were predicted after. One batch is all predicted or
        all not: a tenant held by an unlocked batch waits; a tenant whose counter is not known
        waits while predicted batches of it are in flight (a batch numbered by the database could
        overtake them)."""
        pending = self._pending
        writer = random.getrandbits(62) + 1
        if not self.persist:
            n = min(len(pending), self.max_batch)
            return [pending.popleft() for _ in range(n)], None, writer, {}
        sending, known, predicted_open = self._sending, self._next, self._predicted_open
        predict = self._predicts
        batch: list = []
        held: collections.deque | None = None
        mode: bool | None = None  # True: predicted
        while pending and len(batch) < self.max_batch:
            entry = pending.popleft()
            tenant_id = entry[0]
            if tenant_id in sending:
                want = None
            elif predict and tenant_id in known:
                want = True
            elif tenant_id in predicted_open:
                want = None
            else:
                want = False
            if want is not None and mode is None:
                mode = want
            if want is None or want is not mode:
                if held is None:
                    held = collections.deque()
                held.append(entry)
            else:
                batch.append(entry)
        if held is not None:
            held.extend(pending)
            self._pending = held
        if not mode:
            for entry in batch:  # numbered by the database: known again once its rows are locked
                known.pop(entry[0], None)
            return batch, None, writer, {}
        seqs = []
        after: dict[str, int] = {}
        for entry in batch:
            tenant_id = entry[0]
            seq, last_writer = known[tenant_id]
            if tenant_id not in after:
                after[tenant_id] = last_writer
            known[tenant_id] = (seq + 1, writer)
            seqs.append(seq)
        return batch, seqs, writer, after

    # -- bookkeeping of batches in flight -------------------------------------------------------

    def _opened(self, number: int, tenants: set[str], predicted: bool) -> None:
        self._open[number] = (tenants, predicted)
        _count_up(self._open_count, tenants)
        if predicted:
            _count_up(self._predicted_open, tenants)

    def _closed(self, number: int) -> None:
        tenants, predicted = self._open.pop(number)
        _count_down(self._open_count, tenants)
        if predicted:
            _count_down(self._predicted_open, tenants)
        closers, self._closers = self._closers, []
        for fut in closers:
            if not fut.done():
                fut.set_result(None)
        self._wake.set()  # tenants held back for this batch may go now

    def _let_go(self, tenants: set[str], last: dict[str, int] | None, writer: int) -> None:
        """A batch's counter rows are locked (``last``: the counters as it leaves them, if known)."""
        _count_down(self._sending, tenants)
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
        turn: _Turn,
        seqs: list[int] | None = None,
        after: dict[str, int] | None = None,
    ) -> list[Envelope | None]:
        if seqs is not None:
            assert event_log is not None and after is not None
            try:
                return await self._commit_predicted(batch, seqs, event_log, turn.writer, after, turn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                for tenant_id in turn.tenants:
                    self._next.pop(tenant_id, None)  # read the counters again
                if not isinstance(exc, events_db.CounterMoved | IntegrityError) and not _retryable(exc):
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
        turn: _Turn,
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
            for (tenant_id, type_, ts, data, data_json, _f), seq in zip(batch, seqs)
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
                for entry, env in zip(group, await self._commit(group, number, event_log, _Kept())):
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
        self, batch: list, number: int, event_log: events_db.EventLogWriter | None, turn: _Turn | _Kept
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
                    if attempt == COMMIT_ATTEMPTS or not _retryable(exc):
                        raise
                    if not turn.held:
                        # Rolled back after its tenants were let go. Retrying is in order only if
                        # no batch was taken since (it would number after theirs).
                        assert isinstance(turn, _Turn)
                        if self._batches_taken != number + 1:
                            raise
                        turn.hold_again()
                    log.info(
                        "event batch retried after %s (%d attempts left)", exc.orig, COMMIT_ATTEMPTS - attempt
                    )
            self.stats["commit_s"] += time.monotonic() - started
        return [
            make_envelope(tenant_id, seq, type_, ts, data, data_json)
            for (tenant_id, type_, ts, data, data_json, _f), seq in zip(batch, seqs)
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
                    await (self.sink.forward(envelopes) if inline else self.sink.broadcast(envelopes))
                except asyncio.CancelledError:
                    raise
                except Exception:  # clients catch up from the log on their next event
                    log.exception("emitting %d events failed", len(envelopes))
            if not inline:
                self.stats["emitted"] += len(envelopes)
            if stop:
                return
