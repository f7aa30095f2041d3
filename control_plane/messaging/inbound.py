"""The one inbound service (``app["inbound"]``): inbound messages, statuses, messages typed on the
phone and changes to stored messages (edits, revokes, reactions), from both roads, provider-neutral
(``db.inbound.TenantWork``), stored and published.

    await inbound.submit([TenantWork, ...])   # a webhook delivery: durable before it returns (200)
    inbound.put(tenant_id, messages=[...])     # the Web session's events: kept until stored

One group-commit writer (``db.batch.GroupCommit``) takes everything handed over since it last looked
and stores it in ONE transaction with a fixed handful of multi-row statements per tenant, then emits
its events (``realtime.unit``). One writer, so batches commit in the order they were handed over:

Order. Within a conversation, the event log's seq order and the history's order (``created_at``,
a per-tenant increasing stamp: ``db.inbound.TenantClock``) are the provider's delivery order:
- Web: the bridge's arrival order (the supervisor hands events over in the order the bridge wrote
  them; nothing here sorts them);
- Cloud: the order of the messages within a webhook delivery, and between deliveries stored in one
  batch, their message timestamp (Meta's are whole seconds: equal ones keep their arrival order).
Per tenant, a batch stores its messages (inbound and phone-typed, in that order) first, then its
changes (a reaction finds its target stored in the same batch), then its statuses (an ack finds a
phone message stored in the same batch), then its notices (webhook fields other than messages:
``messaging/notices.py``). A change that arrived before its target is kept pending
(``db.message_changes``) and applied right after the batch that stores the target, in the order
the changes arrived: ``message.received`` (or ``message.sent``) first, then ``message.edited`` /
``message.deleted`` / ``message.reaction``.

MariaDB, inbound messages only (the common case): the fast path (``db.inbound.store_fast``), no
duplicate check first; a wamid stored before fails the INSERT, the batch is rolled back and stored
the careful way (``record_inbound_messages``: check, then write); so does a batch storing a message
some change was waiting for. Elsewhere, or with statuses, phone messages or changes: the careful
way at once.

Contacts named by a BSUID (``db/contacts.py``): the careful way resolves each BSUID to its
conversation, merging a BSUID-only conversation into the phone number's when a message names both
(``conversation.merged``, published before the batch's messages); the writer then remembers where
each BSUID lives, and later messages from it take the fast path. A message whose BSUID is new, or
that brings a phone number the writer has not seen with that BSUID, goes the careful way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from control_plane import events as event_types
from control_plane.db import Database, message_changes, status_facts
from control_plane.db import inbound as inbound_db
from control_plane.db import phone_messages as phone_db
from control_plane.db.batch import GroupCommit
from control_plane.db.engine import utcnow
from control_plane.db.inbound import TenantWork
from control_plane.db.sql import raw_mariadb
from control_plane.messaging import inbound_batch, received_fast
from control_plane.messaging.inbound_batch import Delivery, TenantBatch, messages_only
from control_plane.messaging.notices import store_notices
from control_plane.realtime.envelopes import encode_data
from control_plane.realtime.unit import EventLog, Unit, store_then_publish

log = logging.getLogger(__name__)

Learned = tuple[str, list[dict[str, Any]], list[dict[str, Any]]]  # (tenant, stored rows, merges)
KNOWN_CONVERSATIONS_MAX = 200_000


@dataclass
class IngestStats:
    batches: int = 0
    deliveries: int = 0
    messages_stored: int = 0
    statuses_stored: int = 0
    phone_stored: int = 0
    notices_stored: int = 0
    changes_applied: int = 0
    failed_batches: int = 0
    max_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class InboundService:
    """See the module docstring. ``events()`` returns the publisher (looked up late: realtime may
    start after us) or None."""

    def __init__(self, db: Database, events: Callable[[], EventLog | None], *, max_batch: int = 256) -> None:
        self._db = db
        self._events = events
        self._conn: Any = None  # held: no pool checkout, ping or reset per batch
        self._driver: Any = None  # its driver (aiomysql) connection, for the fast path (MariaDB)
        # (tenant_id, wa_id) -> conversation id, learned from committed upserts. A conversation's id
        # never changes; a stale entry (its tenant deleted) fails the fast path's INSERT, which then
        # falls back to the careful path and forgets the batch's entries.
        self._conversation_ids: dict[tuple[str, str], int] = {}
        # (tenant_id, BSUID) -> its conversation's address, learned from committed batches.
        self._bsuid_addresses: dict[tuple[str, str], str] = {}
        self.stats = IngestStats()
        self._writer: GroupCommit[Delivery] = GroupCommit(
            self._store, name="inbound", max_batch=max_batch, on_lost=self.drop_connection
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Store what was handed over (up to ``grace_s``), then stop."""
        await self._writer.stop(grace_s)
        await self.drop_connection()

    async def flush(self, within_s: float = 10.0) -> bool:
        """Waits until what was handed over so far is stored (tests, shutdown)."""
        return await self._writer.flush(within_s)

    async def drop_connection(self) -> None:
        """Forget the held connection (after an error; tests simulating an outage)."""
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                with contextlib.suppress(Exception):
                    await conn.invalidate()

    # -- handing over ---------------------------------------------------------------------------

    async def submit(self, works: Delivery) -> None:
        """Store ``works`` durably (returns after their commit). Raises ``errors.Unavailable``."""
        if any(w.messages or w.statuses or w.phone or w.changes or w.notices for w in works):
            await self._writer.submit(works)

    def put(
        self,
        tenant_id: str,
        *,
        messages: list[dict[str, Any]] | None = None,
        statuses: list[dict[str, Any]] | None = None,
        phone: list[dict[str, Any]] | None = None,
        changes: list[dict[str, Any]] | None = None,
    ) -> None:
        """Queue items for the next batch, after everything handed over before (kept until stored)."""
        if messages or statuses or phone or changes:
            self._writer.put(
                [TenantWork(tenant_id, messages or [], statuses or [], phone or [], changes=changes or [])]
            )

    # -- storing --------------------------------------------------------------------------------

    async def _store(self, batch: list[Delivery]) -> None:
        per_tenant = inbound_batch.per_tenant(batch)
        events = self._events()
        conn = await self._connection()
        try:
            addresses = self._addresses(per_tenant) if messages_only(per_tenant) else None
            if self._driver is not None and events is not None and addresses is not None:
                try:
                    stored = await self._store_fast(per_tenant, events, addresses)
                except IntegrityError:
                    # A wamid stored before (a redelivery), or a conversation gone with its tenant:
                    # all of it was rolled back; the careful path checks first, stores what is new.
                    self._forget_conversations(per_tenant)
                except message_changes.PendingChangesFound:
                    pass  # rolled back; the careful path stores the batch and applies the changes
                else:
                    self._count(len(batch), (stored, 0, 0, 0, 0))
                    return
            try:
                counts = await self._store_careful(conn, per_tenant, events)
            except IntegrityError:
                # Another writer stored one of these wamids between our check and our (MariaDB:
                # plain, deferred) INSERT: all of it was rolled back; the next check sees theirs.
                log.info("inbound batch of %d raced another writer; storing it once more", len(batch))
                counts = await self._store_careful(conn, per_tenant, events)
        except Exception:
            self.stats.failed_batches += 1
            raise
        self._count(len(batch), counts)

    async def _connection(self) -> Any:
        if self._conn is None:
            conn = await self._db.engine.connect()
            driver = None
            if raw_mariadb(conn):
                try:
                    driver = (await conn.get_raw_connection()).driver_connection
                except BaseException:
                    await conn.close()
                    raise
            self._conn, self._driver = conn, driver
        return self._conn

    def _count(self, deliveries: int, counts: tuple[int, int, int, int, int]) -> None:
        s = self.stats
        s.batches += 1
        s.deliveries += deliveries
        s.max_batch = max(s.max_batch, deliveries)
        s.messages_stored += counts[0]
        s.statuses_stored += counts[1]
        s.phone_stored += counts[2]
        s.changes_applied += counts[3]
        s.notices_stored += counts[4]

    def _forget_conversations(self, per_tenant: dict[str, TenantBatch]) -> None:
        for tenant_id, part in per_tenant.items():
            for _kind, items in part.runs:
                for item in items:
                    self._conversation_ids.pop((tenant_id, inbound_db.address(item, None)), None)
                    # Where a BSUID lives stays known: the careful way checks it, and corrects it.
                    address = self._bsuid_addresses.get((tenant_id, item.get("bsuid") or ""))
                    if address is not None:
                        self._conversation_ids.pop((tenant_id, address), None)

    def _addresses(self, per_tenant: dict[str, TenantBatch]) -> dict[str, dict[str, str]] | None:
        """Per tenant, the conversation address of each BSUID the batch names, when every one is
        known and settled (a message bringing a phone number must find it there already); else None:
        the careful way resolves them (and merges)."""
        known = self._bsuid_addresses
        out: dict[str, dict[str, str]] = {}
        for tenant_id, part in per_tenant.items():
            for _kind, items in part.runs:
                for item in items:
                    bsuid = item.get("bsuid")
                    if item.get("previous_bsuid"):  # the user's BSUID changed: the careful way
                        return None
                    if bsuid is None:
                        continue
                    address = known.get((tenant_id, bsuid))
                    if address is None or (item["wa_id"] != bsuid and item["wa_id"] != address):
                        return None
                    out.setdefault(tenant_id, {})[bsuid] = address
        return out

    def _learn(self, tenant_id: str, rows: list[dict[str, Any]], merges: list[dict[str, Any]]) -> None:
        """After a commit: where the batch's BSUIDs live, and which conversations are gone."""
        if len(self._bsuid_addresses) > KNOWN_CONVERSATIONS_MAX:
            self._bsuid_addresses.clear()
        for merge in merges:
            self._conversation_ids.pop((tenant_id, merge["bsuid"]), None)
        for row in rows:
            bsuid = row.get("provider_user_id")
            if bsuid:
                self._bsuid_addresses[(tenant_id, bsuid)] = row["wa_id"]
                if row["wa_id"] != bsuid:  # a BSUID-only conversation took a phone number
                    self._conversation_ids.pop((tenant_id, bsuid), None)

    async def _store_fast(
        self, per_tenant: dict[str, TenantBatch], events: EventLog, addresses: dict[str, dict[str, str]]
    ) -> int:
        """MariaDB, inbound messages only: one round trip (conversations upsert, plain messages INSERT,
        event-log append) and the COMMIT; one more first when a contact's conversation id is not
        known yet. Returns the number of messages stored."""
        now = utcnow()
        plans = [
            plan
            for plan in (
                inbound_db.InboundPlan(
                    tenant_id, per_tenant[tenant_id].runs[0][1], now, addresses.get(tenant_id)
                )
                for tenant_id in sorted(per_tenant)  # one lock order for every writer
            )
            if plan.rows
        ]
        if not plans:
            return 0
        known = self._conversation_ids
        ids: list[dict[str, int]] = []
        try:
            ids = [{wa_id: known[(p.tenant_id, wa_id)] for wa_id in p.wa_ids()} for p in plans]
        except KeyError:
            ids = []
        upserted = not ids
        driver = self._driver
        async with store_then_publish(_driver_transaction(driver), events) as unit:
            if upserted:  # a contact not seen yet: the upserts first, returning the ids
                ids = [await inbound_db.learn_conversation_ids(driver, plan) for plan in plans]

            def event_rows() -> list[Any]:
                for plan in plans:
                    for row, to in plan.stored():
                        data, json_text = received_fast.received(row, to, encode_data)
                        unit.add(plan.tenant_id, event_types.MESSAGE_RECEIVED, data, json_text)
                prepared = unit.prepare()
                return prepared.rows if prepared is not None else []

            unit.appended(
                await inbound_db.store_fast(self._conn, plans, ids, upserted=upserted, events=event_rows)
            )
        if upserted:
            if len(known) > KNOWN_CONVERSATIONS_MAX:
                known.clear()
            for plan, plan_ids in zip(plans, ids, strict=True):
                known.update(((plan.tenant_id, wa_id), cid) for wa_id, cid in plan_ids.items())
        return sum(len(plan.rows) for plan in plans)

    async def _store_careful(
        self, conn: Any, per_tenant: dict[str, TenantBatch], events: EventLog | None
    ) -> tuple[int, int, int, int, int]:
        """Any database, anything: check what is stored already, then write. Returns the numbers of
        inbound messages, statuses, phone messages, changes applied and notices stored."""
        counts = [0, 0, 0, 0, 0]
        # MariaDB: the messages INSERTs go out with the event-log append, in one round trip.
        deferred: list[str] | None = [] if self._driver is not None else None
        learned: list[Learned] = []
        async with store_then_publish(_transaction(conn), events) as unit:
            for tenant_id in sorted(per_tenant):  # one lock order for every writer
                await _store_tenant(unit, tenant_id, per_tenant[tenant_id], deferred, counts, learned)
            if deferred:
                prepared = unit.prepare()
                if prepared is None:
                    await inbound_db.run_deferred(conn, deferred)
                else:
                    unit.appended(await inbound_db.append_after(conn, deferred, prepared.rows))
        for tenant_id, rows, merges in learned:
            self._learn(tenant_id, rows, merges)
        return counts[0], counts[1], counts[2], counts[3], counts[4]


# ------------------------------------------------------------------------------------- helpers


async def _store_tenant(
    unit: Unit[Any],
    tenant_id: str,
    part: TenantBatch,
    deferred: list[str] | None,
    counts: list[int],
    learned: list[Learned],
) -> None:
    """One tenant's part of a careful batch: message runs in order (each followed by the changes
    that waited for its messages), then changes, statuses and notices; ``counts`` as
    ``_store_careful``'s; what the writer learns of contacts is appended to ``learned``."""
    conn = unit.conn
    for kind, items in part.runs:
        if kind == "phone":
            if deferred:  # in order: the inbound messages before these first
                await inbound_db.run_deferred(conn, deferred)
            rows = await _store_phone(unit, tenant_id, items)
            counts[2] += len(rows)
        else:
            learned.append(await _store_inbound(unit, tenant_id, items, deferred))
            rows = learned[-1][1]
            counts[0] += len(rows)
        counts[3] += await _apply_pending(unit, tenant_id, rows, deferred)
    if part.changes:
        if deferred:  # changes read their targets: store this batch's messages first
            await inbound_db.run_deferred(conn, deferred)
        counts[3] += await _store_changes(unit, tenant_id, part.changes)
    if part.statuses:
        if deferred:  # statuses read messages: store this batch's first
            await inbound_db.run_deferred(conn, deferred)
        counts[1] += await _store_statuses(unit, tenant_id, part.statuses)
    if part.notices:
        if deferred:  # in order: this batch's messages and their events first
            await inbound_db.run_deferred(conn, deferred)
        counts[4] += await store_notices(unit, tenant_id, part.notices)


async def _store_inbound(
    unit: Unit[Any], tenant_id: str, items: list[dict[str, Any]], deferred: list[str] | None
) -> Learned:
    """Store and publish (merges first, then the messages); (tenant, stored rows, merges)."""
    merges: list[dict[str, Any]] = []
    rows = await inbound_db.record_inbound_messages(
        unit.conn, tenant_id, items, deferred=deferred, merged=merges
    )
    for merge in merges:
        unit.add(tenant_id, event_types.CONVERSATION_MERGED, merge)
    to = {m["provider_message_id"]: m.get("to") for m in items}
    for r in rows:
        unit.add(
            tenant_id,
            event_types.MESSAGE_RECEIVED,
            event_types.received_event(r, to.get(r["provider_message_id"])),
        )
    return tenant_id, rows, merges


async def _store_phone(unit: Unit[Any], tenant_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_provider.setdefault(item["provider"], []).append(item)
    stored = []
    for provider, group in by_provider.items():
        for row in await phone_db.record_phone_messages(unit.conn, tenant_id, provider, group):
            unit.add(tenant_id, event_types.MESSAGE_SENT, event_types.phone_sent_event(row))
            stored.append(row)
    return stored


async def _apply_pending(
    unit: Unit[Any], tenant_id: str, rows: list[dict[str, Any]], deferred: list[str] | None
) -> int:
    """Apply the changes that were waiting for the messages just stored (after their events)."""
    # MariaDB: the rows' deferred INSERT goes out now, with a look for waiting changes.
    if not await message_changes.may_be_waiting(unit.conn, tenant_id, rows, before=deferred):
        return 0
    results = await message_changes.apply_pending(unit.conn, tenant_id, rows)
    unit.extend(event_types.change_events(tenant_id, results))
    return len(results)


async def _store_changes(unit: Unit[Any], tenant_id: str, items: list[dict[str, Any]]) -> int:
    results = await message_changes.record_changes(unit.conn, tenant_id, items)
    unit.extend(event_types.change_events(tenant_id, results))
    return len(results)


async def _store_statuses(unit: Unit[Any], tenant_id: str, statuses: list[dict[str, Any]]) -> int:
    changes = await status_facts.apply_status_updates(unit.conn, tenant_id, statuses)
    unit.extend(event_types.status_events(tenant_id, changes))
    return len(changes)


@contextlib.asynccontextmanager
async def _transaction(conn: Any) -> AsyncIterator[Any]:
    """A transaction on a held connection, yielding the connection."""
    async with conn.begin():
        yield conn


@contextlib.asynccontextmanager
async def _driver_transaction(driver: Any) -> AsyncIterator[Any]:
    """A transaction on the driver connection (the fast path): committed at the end, rolled back on
    any error."""
    try:
        yield driver
        await driver.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await driver.rollback()
        raise


async def inbound_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: ``app["inbound"]``, after the database and realtime, before the supervisor
    (bridges still speaking while they stop are stored), webhooks and the dispatcher."""
    service = InboundService(app["db"], lambda: app.get("events"))
    app["inbound"] = service
    service.start()
    yield
    await service.stop()
