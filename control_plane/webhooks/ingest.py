"""Group commit for webhook deliveries.

Each verified delivery is handed to ``WebhookIngester.submit`` and its request waits for the commit
of the batch that carries it: durable before 200. A writer task takes everything queued since it
last looked and stores it in ONE transaction with a fixed handful of multi-row statements per tenant,
so the per-statement and per-commit (fsync) costs are paid once per batch, not once per request. No
timer: while one batch commits, the next one gathers; under light load a batch is one delivery.

One writer by default (``writers=``: more, each with its own connection, so one batch's round trips
overlap the next one's preparation; measured no faster on the webhook bench, as the process, not
MariaDB, is the limit). Their transactions cannot deadlock each other: every batch takes its row locks in one order
(conversations by tenant and contact, then the event-log counters, last, in ``append_events``); an
InnoDB deadlock with anyone else is retried. A batch carrying status updates runs alone (no other
batch in flight), so what it reads of a message is what it updates; the ladder is also enforced by
the UPDATE itself (``messages_db.apply_status_updates``), so no writer can move a status backwards.
Events are emitted after the commit, in the order the batches appended them to the event log (per
tenant: seq order), whichever writer finishes first.

MariaDB, inbound messages only (the common case): the fast path, no duplicate check first (see
``messages_db.InboundPlan``); a wamid stored before fails the INSERT and the batch is rolled back and
stored the careful way (``record_inbound_messages``: check, then write).

A batch that fails for a reason other than a database outage is retried one delivery at a time, so
one poisonous delivery cannot fail the others with it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from control_plane import errors
from control_plane import events as event_types
from control_plane.db import Database, DatabaseUnavailable
from control_plane.db import messages as messages_db
from control_plane.db.engine import utcnow
from control_plane.realtime.publisher import encode_data

_encode_str = json.encoder.encode_basestring  # the C one: a JSON string, non-ASCII kept

log = logging.getLogger(__name__)


@dataclass
class TenantWork:
    """What one delivery stores for one tenant."""

    tenant_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IngestStats:
    batches: int = 0
    deliveries: int = 0
    messages_stored: int = 0
    statuses_stored: int = 0
    failed_batches: int = 0
    max_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


DEADLOCK_CODES = {1213, 1205}  # deadlock, lock wait timeout: InnoDB rolled it back, try again
ATTEMPTS = 3


def is_deadlock(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return isinstance(exc, DBAPIError) and code in DEADLOCK_CODES


def is_connection_lost(exc: BaseException) -> bool:
    """The client lost its connection (codes 2000+: server gone, lost during a query; not connected)."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, ConnectionError) or isinstance(exc, (InterfaceError, ConnectionError)):
        return True
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return isinstance(exc, DBAPIError) and (
        (isinstance(code, int) and code >= 2000) or type(orig).__name__ == "InterfaceError"
    )


def is_db_outage(exc: BaseException) -> bool:
    if isinstance(exc, (DatabaseUnavailable, OperationalError, InterfaceError, PoolTimeout, OSError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def received_event(row: dict[str, Any], to: str | None = None) -> dict[str, Any]:
    """``message.received`` data (the same shape for both providers; see docs/EVENTS.md)."""
    # A fast-path row keeps the content object aside (its "content" is the stored JSON text).
    content = row["_content"] if "_content" in row else row["content"]
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "provider": row["provider"],
        "direction": "inbound",
        "from": row["wa_id"],
        "to": to,
        "contact_name": row.get("contact_name"),
        "type": row["type"],
        "content": content,
        "status": "received",
        "provider_message_id": row["provider_message_id"],
        "timestamp": iso(row.get("provider_timestamp")),
    }


def _json_str(value: Any) -> str:
    if type(value) is str:
        return _encode_str(value)
    if value is None:
        return "null"
    raise TypeError  # anything else: encode_data decides


def received_event_json(data: dict[str, Any], content_json: str) -> str:
    """``encode_data(data)`` for ``received_event``'s data, character for character, ~4x faster:
    the shape is fixed and ``content_json`` is the content's JSON text as the messages row stores it
    (the same separators, non-ASCII kept; webhook content is plain JSON values, so both encoders
    write it alike). Anything unexpected in a field goes through ``encode_data``."""
    try:
        if type(data["conversation_id"]) is not int:
            raise TypeError
        return (
            f'{{"message_id":{_json_str(data["message_id"])},"conversation_id":{data["conversation_id"]},'
            f'"provider":{_json_str(data["provider"])},"direction":"inbound",'
            f'"from":{_json_str(data["from"])},"to":{_json_str(data["to"])},'
            f'"contact_name":{_json_str(data["contact_name"])},"type":{_json_str(data["type"])},'
            f'"content":{content_json},"status":"received",'
            f'"provider_message_id":{_json_str(data["provider_message_id"])},'
            f'"timestamp":{_json_str(data["timestamp"])}}}'
        )
    except TypeError:
        return encode_data(data)


def status_event(change: dict[str, Any]) -> dict[str, Any]:
    """``message.status`` / ``message.failed`` data."""
    error = None
    if change["status"] == "failed":
        error = {"code": change.get("error_code"), "message": change.get("error_message")}
    return {
        "message_id": change["message_id"],
        "conversation_id": change["conversation_id"],
        "provider": change["provider"],
        "direction": "outbound",
        "to": change.get("recipient_id"),
        "status": change["status"],
        "provider_message_id": change["provider_message_id"],
        "timestamp": iso(change.get("occurred_at")),
        "error": error,
    }


@dataclass
class _Pending:
    works: list[TenantWork]
    future: asyncio.Future


class _Writer:
    """One writer's connection (held: no pool checkout, ping or reset per batch)."""

    __slots__ = ("conn", "driver", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.conn: Any = None
        self.driver: Any = None  # its driver (aiomysql) connection, for the fast path (MariaDB)


class _Emission:
    """One batch's events, in the order the batches appended them (their seqs): emitted once done."""

    __slots__ = ("done", "envelopes")

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] | None = None
        self.done = False


class _Gate:
    """Batches share the database (message-only ones), or one has it alone (one with statuses).
    A batch waiting to be alone goes before shared ones that come after it."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._alone = False
        self._waiting_alone = 0

    async def acquire(self, alone: bool) -> None:
        async with self._cond:
            if alone:
                self._waiting_alone += 1
                try:
                    await self._cond.wait_for(lambda: not self._alone and self._shared == 0)
                finally:
                    self._waiting_alone -= 1
                self._alone = True
            else:
                await self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
                self._shared += 1

    async def release(self, alone: bool) -> None:
        async with self._cond:
            if alone:
                self._alone = False
            else:
                self._shared -= 1
            self._cond.notify_all()


class WebhookIngester:
    def __init__(
        self, db: Database, events: Callable[[], Any], *, max_batch: int = 256, writers: int = 1
    ) -> None:
        self._db = db
        self._events = events  # () -> app["events"] or None (looked up late: realtime may start after us)
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._writers = [_Writer(n) for n in range(max(1, writers))]
        self._tasks: list[asyncio.Task] = []
        self._gate = _Gate()
        self._emissions: deque[_Emission] = deque()
        # (tenant_id, wa_id) -> conversation id, learned from committed upserts. A conversation's id
        # never changes; a stale entry (its tenant deleted) fails the fast path's INSERT, which then
        # falls back to the careful path and forgets the batch's entries.
        self._conversation_ids: dict[tuple[str, str], int] = {}
        self.stats = IngestStats()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(w), name=f"webhook-ingester-{w.number}") for w in self._writers
        ]

    async def stop(self) -> None:
        if not self._tasks:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.drop_connection()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(errors.Unavailable("shutting down; retry later"))

    async def drop_connection(self) -> None:
        """Forget the writers' connections (after an error; tests simulating an outage)."""
        for writer in self._writers:
            await self._drop(writer)

    @staticmethod
    async def _drop(writer: _Writer) -> None:
        conn, writer.conn, writer.driver = writer.conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                try:
                    await conn.invalidate()
                except Exception:
                    pass

    async def submit(self, works: list[TenantWork]) -> None:
        """Store ``works`` durably (returns after their commit). Raises ``errors.Unavailable``."""
        for work in works:
            if work.messages or work.statuses:
                break
        else:
            return
        for task in self._tasks:
            if not task.done():
                break
        else:  # none started, or every writer ended
            raise errors.Unavailable("webhook ingest is not running; retry later")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(works, future))
        self._wake.set()
        await future

    async def _run(self, writer: _Writer) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            try:
                await self._commit_batch(writer, batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(errors.Unavailable("shutting down; retry later"))
                raise
            except Exception:
                log.exception("webhook ingester: unexpected error")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(errors.Unavailable("storage failed; retry later"))

    async def _commit_batch(self, writer: _Writer, batch: list[_Pending]) -> None:
        alone = any(work.statuses for pending in batch for work in pending.works)
        await self._gate.acquire(alone)
        try:
            await self._commit_batch_now(writer, batch)
        finally:
            await self._gate.release(alone)

    async def _commit_batch_now(self, writer: _Writer, batch: list[_Pending]) -> None:
        attempt = 1
        while True:
            held = writer.conn is not None
            try:
                await self._store(writer, batch)
                break
            except Exception as exc:
                if attempt < ATTEMPTS and (is_deadlock(exc) or (held and is_connection_lost(exc))):
                    # Deadlock: InnoDB rolled it back. A held connection lost (MariaDB restarted, or
                    # dropped it while idle): once more on a new one. Safe even if it was lost during
                    # the COMMIT and that COMMIT went through: storage is idempotent per wamid.
                    log.info("webhook batch of %d: %s; trying again", len(batch), exc)
                    if held and is_connection_lost(exc):
                        await self._drop(writer)
                    attempt += 1
                    continue
                self.stats.failed_batches += 1
                await self._drop(writer)
                if is_db_outage(exc):
                    log.warning(
                        "webhook batch of %d not stored, database unavailable: %s",
                        len(batch),
                        type(exc).__name__,
                    )
                    self._fail(
                        batch,
                        errors.Unavailable(
                            "the database is unavailable; retry later", code="database_unavailable"
                        ),
                    )
                    return
                if len(batch) == 1:
                    log.exception("webhook delivery not stored")
                    self._fail(
                        batch, errors.Unavailable("storage failed; retry later", code="storage_failed")
                    )
                    return
                log.warning(
                    "webhook batch of %d failed (%s); retrying one delivery at a time",
                    len(batch),
                    type(exc).__name__,
                )
                for pending in batch:
                    await self._commit_batch_now(writer, [pending])
                return
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(None)

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    # -- emission in event-log order ------------------------------------------------------------

    def _appended(self) -> _Emission:
        """Call when a batch's event-log append has returned: from then on its transaction holds its
        tenants' counters until it ends, so no later append of theirs can return before it commits."""
        emission = _Emission()
        self._emissions.append(emission)
        return emission

    async def _finished(self, emission: _Emission, envelopes: list[dict[str, Any]] | None) -> None:
        """The batch committed (``envelopes``) or failed (None): emit what is done, in append order."""
        emission.envelopes, emission.done = envelopes, True
        emissions = self._emissions
        while emissions and emissions[0].done:
            ready = emissions.popleft().envelopes
            if ready:
                try:
                    await self._events().emit(ready)
                except Exception:
                    log.exception("webhook events stored but not emitted (clients will catch up by seq)")

    # -- storing --------------------------------------------------------------------------------

    async def _connection(self, writer: _Writer) -> Any:
        if writer.conn is None:
            conn = await self._db.engine.connect()
            driver = None
            if messages_db.raw_mariadb(conn):
                try:
                    driver = (await conn.get_raw_connection()).driver_connection
                except BaseException:
                    await conn.close()
                    raise
            writer.conn, writer.driver = conn, driver
        return writer.conn

    async def _store(self, writer: _Writer, batch: list[_Pending]) -> None:
        per_tenant: dict[str, TenantWork] = {}
        for pending in batch:
            for work in pending.works:
                merged = per_tenant.get(work.tenant_id)
                if merged is None:
                    merged = per_tenant[work.tenant_id] = TenantWork(work.tenant_id, [], [])
                merged.messages.extend(work.messages)
                merged.statuses.extend(work.statuses)
        events = self._events()
        conn = await self._connection(writer)
        if (
            writer.driver is not None
            and events is not None
            and hasattr(events, "append_many")
            and not any(w.statuses for w in per_tenant.values())
        ):
            try:
                await self._store_fast(writer, per_tenant, events, len(batch))
                return
            except IntegrityError:
                # A wamid stored before (a redelivery), or a conversation gone with its tenant: all
                # of it was rolled back; the careful path checks first and stores what is new.
                for work in per_tenant.values():
                    for item in work.messages:
                        wa_id = messages_db.canonical_wa_id(item["wa_id"])[:32] or "0"
                        self._conversation_ids.pop((work.tenant_id, wa_id), None)
        await self._store_careful(conn, per_tenant, events, len(batch))

    async def _store_fast(
        self, writer: _Writer, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
    ) -> None:
        """MariaDB, inbound messages only: one round trip (conversations upsert, plain messages INSERT,
        event-log append) and the COMMIT; one more first when a contact's conversation id is not
        known yet. See ``messages_db.InboundPlan``."""
        conn, driver = writer.conn, writer.driver
        now = utcnow()
        known = self._conversation_ids
        plans = [
            plan
            for plan in (
                messages_db.InboundPlan(tenant_id, per_tenant[tenant_id].messages, now)
                for tenant_id in sorted(per_tenant)
            )  # one lock order for every writer
            if plan.rows
        ]
        if not plans:
            return
        ids: list[dict[str, int]] = []
        try:
            for plan in plans:
                tenant_id = plan.tenant_id
                ids.append({wa_id: known[(tenant_id, wa_id)] for wa_id in plan.wa_ids()})
        except KeyError:
            ids = []
        learned: dict[tuple[str, str], int] = {}
        emission = None
        try:
            if ids:  # every conversation known: the upserts go in the one round trip
                statements = [
                    plan.upsert_conversations_sql(returning=False, ids=plan_ids)
                    for plan, plan_ids in zip(plans, ids)
                ]
            else:  # a contact not seen yet: the upserts first, returning the ids
                statements = []
                for plan in plans:
                    rows = await messages_db.driver_fetch(
                        driver, plan.upsert_conversations_sql(returning=True)
                    )
                    got = {wa_id: cid for cid, wa_id in rows}
                    ids.append(got)
                    learned.update(((plan.tenant_id, wa_id), cid) for wa_id, cid in got.items())
            statements.extend(plan.insert_messages_sql(plan_ids) for plan, plan_ids in zip(plans, ids))
            new_events = []
            for plan in plans:
                for row, to in plan.stored():
                    data = received_event(row, to)
                    new_events.append(
                        (
                            plan.tenant_id,
                            event_types.MESSAGE_RECEIVED,
                            data,
                            received_event_json(data, row["content"]),
                        )
                    )
            envelopes = list(await events.append_many(conn, new_events, before=statements))
            emission = self._appended()
            await driver.commit()
        except BaseException:
            try:
                await driver.rollback()
            except Exception:
                pass
            if emission is not None:
                await self._finished(emission, None)
            raise
        if learned:
            if len(known) > 200_000:
                known.clear()
            known.update(learned)
        self._count(deliveries, sum(len(plan.rows) for plan in plans), 0)
        await self._finished(emission, envelopes)

    def _count(self, deliveries: int, messages: int, statuses: int) -> None:
        self.stats.batches += 1
        self.stats.deliveries += deliveries
        self.stats.max_batch = max(self.stats.max_batch, deliveries)
        self.stats.messages_stored += messages
        self.stats.statuses_stored += statuses

    async def _store_careful(
        self, conn: Any, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
    ) -> None:
        try:
            await self._store_checked(conn, per_tenant, events, deliveries)
        except IntegrityError:
            # Another writer stored one of these wamids between our check and our (MariaDB: plain,
            # deferred) INSERT: all of it was rolled back; the next check sees theirs.
            log.info("webhook batch of %d raced another writer; storing it once more", deliveries)
            await self._store_checked(conn, per_tenant, events, deliveries)

    async def _store_checked(
        self, conn: Any, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
    ) -> None:
        """Any database, messages and statuses: check what is stored already, then write."""
        new_events: list[tuple[str, str, dict[str, Any]]] = []
        stored_messages = stored_statuses = 0
        # MariaDB: the messages INSERTs go out with the event-log append, in one round trip.
        deferred: list[str] | None = [] if messages_db.raw_mariadb(conn) else None
        envelopes: list[dict[str, Any]] = []
        emission = None
        try:
            async with conn.begin():
                for tenant_id in sorted(per_tenant):  # one lock order for every writer
                    work = per_tenant[tenant_id]
                    if work.messages:
                        rows = await messages_db.record_inbound_messages(
                            conn, tenant_id, work.messages, deferred=deferred
                        )
                        stored_messages += len(rows)
                        to = {m["provider_message_id"]: m.get("to") for m in work.messages}
                        new_events.extend(
                            (
                                tenant_id,
                                event_types.MESSAGE_RECEIVED,
                                received_event(r, to.get(r["provider_message_id"])),
                            )
                            for r in rows
                        )
                    if work.statuses:
                        if deferred:  # statuses read messages: store this batch's first
                            await messages_db.run_deferred(conn, deferred)
                        changes = await messages_db.apply_status_updates(conn, tenant_id, work.statuses)
                        stored_statuses += len(changes)
                        for change in changes:
                            if not change["changed"]:
                                continue  # a late 'delivered' after 'read': recorded, but nothing moved
                            data = status_event(change)
                            new_events.append((tenant_id, event_types.MESSAGE_STATUS, data))
                            if change["status"] == "failed":
                                new_events.append((tenant_id, event_types.MESSAGE_FAILED, data))
                if new_events and events is not None:
                    append_many = getattr(events, "append_many", None)
                    if append_many is not None and deferred:
                        envelopes = list(await append_many(conn, new_events, before=deferred))
                    elif append_many is not None:
                        envelopes = list(await append_many(conn, new_events))
                    else:
                        if deferred:
                            await messages_db.run_deferred(conn, deferred)
                        for tenant_id, type_, data in new_events:
                            envelopes.append(await events.append(conn, tenant_id, type_, data))
                    emission = self._appended()
                if deferred:
                    await messages_db.run_deferred(conn, deferred)
        except BaseException:
            if emission is not None:
                await self._finished(emission, None)
            raise
        self._count(deliveries, stored_messages, stored_statuses)
        if emission is not None:
            await self._finished(emission, envelopes)
