"""Group commit for webhook deliveries.

Each verified delivery is handed to ``WebhookIngester.submit`` and its request waits for the commit
of the batch that carries it: durable before 200. One writer task takes everything queued since its
last commit and stores it in ONE transaction with a fixed handful of multi-row statements per tenant
(``record_inbound_messages``, ``apply_status_updates``, the event-log append), so the per-statement
and per-commit (fsync) costs are paid once per batch, not once per request. No timer: while one
batch commits, the next one gathers; under light load a batch is one delivery.

A batch that fails for a reason other than a database outage is retried one delivery at a time, so
one poisonous delivery cannot fail the others with it. Events are emitted after the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from control_plane import errors
from control_plane.db import Database, DatabaseUnavailable
from control_plane.db import messages as messages_db
from control_plane.db.engine import utcnow
from control_plane.realtime import event_types

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
    return {"message_id": row["id"], "conversation_id": row["conversation_id"], "provider": row["provider"],
            "direction": "inbound", "from": row["wa_id"], "to": to, "contact_name": row.get("contact_name"),
            "type": row["type"], "content": row["content"], "status": "received",
            "provider_message_id": row["provider_message_id"], "timestamp": iso(row.get("provider_timestamp"))}


def status_event(change: dict[str, Any]) -> dict[str, Any]:
    """``message.status`` / ``message.failed`` data."""
    error = None
    if change["status"] == "failed":
        error = {"code": change.get("error_code"), "message": change.get("error_message")}
    return {"message_id": change["message_id"], "conversation_id": change["conversation_id"],
            "provider": change["provider"], "direction": "outbound", "to": change.get("recipient_id"),
            "status": change["status"], "provider_message_id": change["provider_message_id"],
            "timestamp": iso(change.get("occurred_at")), "error": error}


@dataclass
class _Pending:
    works: list[TenantWork]
    future: asyncio.Future


class WebhookIngester:
    def __init__(self, db: Database, events: Callable[[], Any], *, max_batch: int = 256) -> None:
        self._db = db
        self._events = events  # () -> app["events"] or None (looked up late: realtime may start after us)
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._conn: Any = None  # the writer's own connection: no pool checkout/ping/reset per batch
        self._driver: Any = None  # its driver (aiomysql) connection, for the fast path
        # (tenant_id, wa_id) -> conversation id, learned from committed upserts. A conversation's id
        # never changes; a stale entry (its tenant deleted) fails the fast path's INSERT, which then
        # falls back to the careful path and forgets the batch's entries.
        self._conversation_ids: dict[tuple[str, str], int] = {}
        self.stats = IngestStats()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-ingester")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        await self.drop_connection()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(errors.Unavailable("shutting down; retry later"))

    async def drop_connection(self) -> None:
        """Forget the writer's connection (after an error; tests simulating an outage)."""
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                try:
                    await conn.invalidate()
                except Exception:  # noqa: BLE001
                    pass

    async def submit(self, works: list[TenantWork]) -> None:
        """Store ``works`` durably (returns after their commit). Raises ``errors.Unavailable``."""
        if not any(w.messages or w.statuses for w in works):
            return
        if self._task is None or self._task.done():
            raise errors.Unavailable("webhook ingest is not running; retry later")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(works, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
                try:
                    await self._commit_batch(batch)
                except asyncio.CancelledError:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(errors.Unavailable("shutting down; retry later"))
                    raise
                except Exception:  # noqa: BLE001 - the writer must survive anything
                    log.exception("webhook ingester: unexpected error")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(errors.Unavailable("storage failed; retry later"))

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            envelopes = await self._store(batch)
        except Exception as exc:  # noqa: BLE001
            self.stats.failed_batches += 1
            await self.drop_connection()
            if is_db_outage(exc):
                log.warning("webhook batch of %d not stored, database unavailable: %s", len(batch),
                            type(exc).__name__)
                self._fail(batch, errors.Unavailable("the database is unavailable; retry later",
                                                     code="database_unavailable"))
                return
            if len(batch) == 1:
                log.exception("webhook delivery not stored")
                self._fail(batch, errors.Unavailable("storage failed; retry later", code="storage_failed"))
                return
            log.warning("webhook batch of %d failed (%s); retrying one delivery at a time", len(batch),
                        type(exc).__name__)
            for pending in batch:
                await self._commit_batch([pending])
            return
        for pending in batch:
            if not pending.future.done():
                pending.future.set_result(None)
        if envelopes:
            events = self._events()
            try:
                await events.emit(envelopes)
            except Exception:  # noqa: BLE001 - stored and logged; clients catch up by seq
                log.exception("webhook events stored but not emitted (clients will catch up by seq)")

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _connection(self) -> Any:
        if self._conn is None:
            conn = await self._db.engine.connect()
            driver = None
            if messages_db.raw_mariadb(conn):
                try:
                    driver = (await conn.get_raw_connection()).driver_connection
                except BaseException:
                    await conn.close()
                    raise
            self._conn, self._driver = conn, driver
        return self._conn

    async def _store(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        per_tenant: dict[str, TenantWork] = {}
        for pending in batch:
            for work in pending.works:
                merged = per_tenant.get(work.tenant_id)
                if merged is None:
                    merged = per_tenant[work.tenant_id] = TenantWork(work.tenant_id, [], [])
                merged.messages.extend(work.messages)
                merged.statuses.extend(work.statuses)
        events = self._events()
        conn = await self._connection()
        if (self._driver is not None and events is not None and hasattr(events, "append_many")
                and not any(w.statuses for w in per_tenant.values())):
            try:
                return await self._store_fast(per_tenant, events, len(batch))
            except IntegrityError:
                # A wamid stored before (a redelivery), or a conversation gone with its tenant: all
                # of it was rolled back; the careful path checks first and stores what is new.
                for work in per_tenant.values():
                    for item in work.messages:
                        self._conversation_ids.pop((work.tenant_id, item["wa_id"]), None)
        return await self._store_careful(conn, per_tenant, events, len(batch))

    async def _store_fast(self, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
                          ) -> list[dict[str, Any]]:
        """MariaDB, inbound messages only: one round trip (conversations upsert, plain messages INSERT,
        event-log append) and the COMMIT; one more first for contacts whose conversation id is not
        known yet. See ``messages_db.InboundPlan``."""
        conn, driver = self._conn, self._driver
        now = utcnow()
        known = self._conversation_ids
        learned: dict[tuple[str, str], int] = {}
        statements: list[str] = []
        new_events: list[tuple[str, str, dict[str, Any]]] = []
        stored: list[tuple[str, messages_db.InboundPlan]] = []
        try:
            for tenant_id in sorted(per_tenant):  # one lock order for every writer
                work = per_tenant[tenant_id]
                plan = messages_db.InboundPlan(tenant_id, work.messages, now)
                if not plan.rows:
                    continue
                ids: dict[str, int] = {}
                for wa_id in plan.wa_ids():
                    cid = known.get((tenant_id, wa_id))
                    if cid is None:
                        break
                    ids[wa_id] = cid
                else:
                    statements.append(plan.upsert_conversations_sql(returning=False))
                    statements.append(plan.insert_messages_sql(ids))
                    stored.append((tenant_id, plan))
                    continue
                # A contact we have not seen: upsert them all (one statement, one lock order) for the ids.
                rows = await messages_db.driver_fetch(driver, plan.upsert_conversations_sql(returning=True))
                ids = {wa_id: cid for cid, wa_id in rows}
                learned.update(((tenant_id, wa_id), cid) for wa_id, cid in ids.items())
                statements.append(plan.insert_messages_sql(ids))
                stored.append((tenant_id, plan))
            if not stored:
                await driver.rollback()
                return []
            for tenant_id, plan in stored:
                for row, to in plan.stored():
                    new_events.append((tenant_id, event_types.MESSAGE_RECEIVED, received_event(row, to)))
            envelopes = list(await events.append_many(conn, new_events, before=statements))
            await driver.commit()
        except BaseException:
            try:
                await driver.rollback()
            except Exception:  # noqa: BLE001 - the caller drops the connection on what is not IntegrityError
                pass
            raise
        if learned:
            if len(known) > 200_000:
                known.clear()
            known.update(learned)
        self._count(deliveries, sum(len(plan.rows) for _, plan in stored), 0)
        return envelopes

    def _count(self, deliveries: int, messages: int, statuses: int) -> None:
        self.stats.batches += 1
        self.stats.deliveries += deliveries
        self.stats.max_batch = max(self.stats.max_batch, deliveries)
        self.stats.messages_stored += messages
        self.stats.statuses_stored += statuses

    async def _store_careful(self, conn: Any, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
                             ) -> list[dict[str, Any]]:
        try:
            return await self._store_checked(conn, per_tenant, events, deliveries)
        except IntegrityError:
            # Another writer stored one of these wamids between our check and our (MariaDB: plain,
            # deferred) INSERT: all of it was rolled back; the next check sees theirs.
            log.info("webhook batch of %d raced another writer; storing it once more", deliveries)
            return await self._store_checked(conn, per_tenant, events, deliveries)

    async def _store_checked(self, conn: Any, per_tenant: dict[str, TenantWork], events: Any, deliveries: int
                             ) -> list[dict[str, Any]]:
        """Any database, messages and statuses: check what is stored already, then write."""
        new_events: list[tuple[str, str, dict[str, Any]]] = []
        stored_messages = stored_statuses = 0
        # MariaDB: the messages INSERTs go out with the event-log append, in one round trip.
        deferred: list[str] | None = [] if messages_db.raw_mariadb(conn) else None
        async with conn.begin():
            for tenant_id in sorted(per_tenant):  # one lock order for every writer
                work = per_tenant[tenant_id]
                if work.messages:
                    rows = await messages_db.record_inbound_messages(conn, tenant_id, work.messages,
                                                                     deferred=deferred)
                    stored_messages += len(rows)
                    to = {m["provider_message_id"]: m.get("to") for m in work.messages}
                    new_events.extend((tenant_id, event_types.MESSAGE_RECEIVED,
                                       received_event(r, to.get(r["provider_message_id"]))) for r in rows)
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
            envelopes: list[dict[str, Any]] = []
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
            if deferred:
                await messages_db.run_deferred(conn, deferred)
        self._count(deliveries, stored_messages, stored_statuses)
        return envelopes
