"""Inbound messages (both providers) and messages typed on the Web session's phone, stored in the
order they are given: the writers hand them over in the provider's delivery order, and that order
becomes the history's (``created_at``, see ``TenantClock``) and the event log's.

Batch functions issue a fixed handful of multi-row statements whatever the batch size: the inbound
writer calls them once per tenant per batch.

MariaDB fast path (``InboundPlan`` + ``store_fast``): no duplicate check before writing. The
conversations upsert, a PLAIN messages INSERT and the event-log append go out in one round trip,
so a wamid stored before (a redelivery) fails the INSERT (IntegrityError) and the caller rolls
everything back and stores the batch the careful way (``record_inbound_messages``: check, then
write). Conversation ids come from the caller's cache; contacts it does not know are upserted
first, in their own round trip, to learn theirs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import contacts as contacts_db
from control_plane.db import events as events_db
from control_plane.db import inbound_sql, message_changes, sql
from control_plane.db.conversations import (
    canonical_wa_id,
    clip,
    conversation_kind,
    conversations,
    insert_ignore,
    upsert_conversations,
)
from control_plane.db.engine import utcnow
from control_plane.db.messages import (
    dump_json,
    load_json,
    messages,
    new_message_ids,
)
from control_plane.statuses import MessageStatus

_TICK = dt.timedelta(microseconds=1)
_WHAT = "inbound messages"


@dataclass
class TenantWork:
    """What one hand-over (a webhook delivery, a Web event) stores for one tenant, provider-neutral:
    inbound ``messages`` (``record_inbound_messages`` items), ``statuses`` (``apply_status_updates``
    items), ``phone`` messages (typed on the Web session's phone, or in the WhatsApp Business app:
    ``phone_messages.record_phone_messages`` items), ``changes`` to stored messages (edits, revokes,
    reactions: ``message_changes.record_changes`` items) and ``notices``: changes of webhook fields
    other than messages (``webhooks/fields.py``: kept raw in ``provider_events``, applied, published
    after the rest)."""

    tenant_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    phone: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


class TenantClock:
    """``created_at`` for new message rows: now, but strictly after the tenant's previous one (in this
    process), so rows stored in one batch, or in one microsecond, keep the order they were stored
    in; the history (ordered by ``created_at``, then ``id``) is stable and in delivery order."""

    def __init__(self) -> None:
        self._last: dict[str, dt.datetime] = {}

    def stamps(self, tenant_id: str, n: int, now: dt.datetime) -> list[dt.datetime]:
        if n <= 0:
            return []
        last = self._last.get(tenant_id)
        at = now if last is None or now > last else last + _TICK
        out = [at]
        for _ in range(n - 1):
            at += _TICK
            out.append(at)
        if len(self._last) > 100_000:
            self._last.clear()
        self._last[tenant_id] = at
        return out


clock = TenantClock()


# ------------------------------------------------------------------------------------- preparing rows


def _fresh_inbound(items: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Items keyed by (provider, provider_message_id), in the given order; the first of duplicates wins."""
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        pmid = item["provider_message_id"]
        key = (item["provider"], pmid)  # whole: the parsers refuse an id past PROVIDER_ID_LEN
        if key not in fresh:
            fresh[key] = item
    return fresh


def address(item: dict[str, Any], addresses: dict[str, str] | None) -> str:
    """The conversation address of an inbound item's sender: where ``resolve_contacts`` (or the
    writer's cache) put its BSUID, else its phone number's digits (or its BSUID)."""
    bsuid = item.get("bsuid")
    wa_id = item["wa_id"] if bsuid is None or not addresses else addresses.get(bsuid) or item["wa_id"]
    if not wa_id.isdigit() or not wa_id.isascii():
        wa_id = canonical_wa_id(wa_id) or "0"
    return wa_id  # whole: the parsers refuse an address past CONTACT_ID_LEN


_RECEIVED = MessageStatus.RECEIVED.value


def _inbound_rows(
    tenant_id: str,
    fresh: dict[tuple[str, str], dict[str, Any]],
    now: dt.datetime,
    addresses: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Message rows for new inbound items, in the given (delivery) order, ``created_at`` increasing;
    ``_wa_id``/``_contact_name``/``_content``/``_to``/``_username`` are kept aside for the
    conversations and events."""
    rows: list[dict[str, Any]] = []
    ids = new_message_ids(len(fresh))
    stamps = clock.stamps(tenant_id, len(fresh), now)
    get_address = addresses.get if addresses else None
    for mid, at, ((provider, pmid), item) in zip(ids, stamps, fresh.items(), strict=True):
        get = item.get
        bsuid = get("bsuid")
        # address(item, addresses), in line (a call per message costs more than its work)
        wa_id = item["wa_id"] if bsuid is None or get_address is None else get_address(bsuid) or item["wa_id"]
        if not wa_id.isdigit() or not wa_id.isascii():
            wa_id = canonical_wa_id(wa_id) or "0"
        kind = get("type") or "unknown"
        raw = get("raw")
        content = get("content")
        rows.append(
            {
                "id": mid,
                "tenant_id": tenant_id,
                "conversation_id": None,
                "direction": "inbound",
                "provider": provider,
                "provider_message_id": pmid,
                "type": kind if len(kind) <= 32 else clip(kind, 32),  # the whole type stays in raw/content
                "content": dump_json(content),
                "status": _RECEIVED,
                "error_code": None,
                "error_message": None,
                "created_at": at,
                "updated_at": now,
                "provider_timestamp": get("provider_timestamp") or now,
                "author": get("author"),  # a wa_id, whole (the parsers refuse longer)
                "provider_user_id": bsuid,
                "raw": None if raw is None else dump_json(raw),
                "_wa_id": wa_id,
                "_contact_name": clip(get("contact_name"), 256),
                "_username": get("username"),
                "_content": content,
                "_to": get("to"),
                # created_at's digits, written once for the INSERT's literal and the event's text
                "_created_iso": at.isoformat(timespec="microseconds"),
            }
        )
    return rows


def _conversation_rows(tenant_id: str, rows: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """One upsert row per contact, aggregated in Python; sorted so concurrent writers lock in one order."""
    convs: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = convs.get(r["_wa_id"])
        if c is None:
            c = convs[r["_wa_id"]] = {
                "tenant_id": tenant_id,
                "wa_id": r["_wa_id"],
                "kind": conversation_kind(r["_wa_id"]),
                "contact_name": None,
                "provider_last": r["provider"],
                "last_inbound_at": r["provider_timestamp"],
                "last_message_at": r["provider_timestamp"],
                "last_message_id": r["id"],
                "unread_count": 0,
                "created_at": now,
                "updated_at": now,
                "bsuid": None,
                "username": None,
            }
        c["unread_count"] += 1
        if r["_contact_name"]:
            c["contact_name"] = r["_contact_name"]
        if r["provider_user_id"]:
            c["bsuid"] = r["provider_user_id"]
        if r["_username"]:
            c["username"] = r["_username"]
        if r["provider_timestamp"] >= c["last_inbound_at"]:
            c["last_inbound_at"] = c["last_message_at"] = r["provider_timestamp"]
            c["last_message_id"] = r["id"]
            c["provider_last"] = r["provider"]
    return [convs[k] for k in sorted(convs)]


def _stored_row(r: dict[str, Any]) -> dict[str, Any]:
    """What ``record_inbound_messages`` returns for a stored row: content decoded, wa_id and contact_name."""
    stored = {k: v for k, v in r.items() if k[0] != "_"}
    stored["content"] = load_json(r["content"]) if r.get("_content") is None else r["_content"]
    stored["wa_id"] = r["_wa_id"]
    stored["contact_name"] = r["_contact_name"]
    return stored


# ------------------------------------------------------------------------------- the careful path


async def _drop_stored(
    conn: AsyncConnection, tenant_id: str, fresh: dict[tuple[str, str], dict[str, Any]], raw: bool
) -> None:
    """Forget the items whose (provider, provider message id) is stored already."""
    by_provider: dict[str, list[str]] = {}
    for provider, pmid in fresh:
        by_provider.setdefault(provider, []).append(pmid)
    if raw:  # one statement for every provider, written out (no SQLAlchemy compile, no escaping)
        [(found, _)] = await sql.round_trip(
            conn, [inbound_sql.existing_wamids_sql(tenant_id, by_provider)], what=_WHAT
        )
        for provider, pmid in found:
            fresh.pop((provider, pmid), None)
        return
    for provider, pmids in by_provider.items():
        result = await conn.execute(
            sa.select(messages.c.provider_message_id).where(
                messages.c.tenant_id == tenant_id,
                messages.c.provider == provider,
                messages.c.provider_message_id.in_(pmids),
            )
        )
        for (pmid,) in result:
            fresh.pop((provider, pmid), None)


async def _conversation_ids(
    conn: AsyncConnection, tenant_id: str, conv_rows: list[dict[str, Any]], raw: bool
) -> dict[str, int]:
    """Upsert the batch's conversations; their ids by wa_id."""
    if raw:  # MariaDB: the upsert returns the ids (one round trip, not two)
        [(found, _)] = await sql.round_trip(
            conn, [inbound_sql.upsert_conversations_sql(conv_rows)], what=_WHAT
        )
        return {wa: cid for cid, wa in found}
    await upsert_conversations(conn, conv_rows)
    result = await conn.execute(
        sa.select(conversations.c.id, conversations.c.wa_id).where(
            conversations.c.tenant_id == tenant_id,
            conversations.c.wa_id.in_([c["wa_id"] for c in conv_rows]),
        )
    )
    return {wa: cid for cid, wa in result}


async def _insert_rows(
    conn: AsyncConnection, tenant_id: str, rows: list[dict[str, Any]], raw: bool, deferred: list[str] | None
) -> list[dict[str, Any]]:
    """INSERT the rows (or defer the statement); returns the rows that are ours."""
    if raw and deferred is not None:
        deferred.append(inbound_sql.insert_messages_sql(rows, ignore=False))
        return rows  # all or nothing: see record_inbound_messages
    if raw:
        [(_, inserted)] = await sql.round_trip(conn, [inbound_sql.insert_messages_sql(rows)], what=_WHAT)
    else:
        insert_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        inserted = (await conn.execute(insert_ignore(conn, messages), insert_rows)).rowcount
    if inserted is None or not 0 <= inserted < len(rows):
        return rows
    # Another node stored some of these between our check and our insert: keep only ours.
    got = await conn.execute(
        sa.select(messages.c.id).where(
            messages.c.tenant_id == tenant_id, messages.c.id.in_([r["id"] for r in rows])
        )
    )
    mine = {mid for (mid,) in got}
    return [r for r in rows if r["id"] in mine]


async def record_inbound_messages(
    conn: AsyncConnection,
    tenant_id: str,
    items: Iterable[dict[str, Any]],
    *,
    deferred: list[str] | None = None,
    merged: list[contacts_db.Merge] | None = None,
) -> list[dict[str, Any]]:
    """Store inbound messages once per (tenant, provider, provider_message_id), in the given order;
    create/refresh their conversations (contact name, BSUID, username, last_inbound_at = the 24 h
    window, last message, unread count).

    Each item: ``provider``, ``provider_message_id``, ``wa_id`` (phone digits, or the BSUID when the
    number is unknown), ``type``, ``content`` (JSON-able), ``provider_timestamp`` (naive UTC),
    optional ``contact_name``, ``author`` (a group message's member), ``bsuid``, ``previous_bsuid``,
    ``username``, ``raw`` (the provider's message object). Senders named by BSUID are resolved to
    their conversation first (``contacts.resolve_contacts``; the merges it makes are appended to
    ``merged``). Returns the rows actually stored (new ones only, content decoded, ``wa_id`` = the
    conversation's address and ``contact_name`` added), in the given order.

    ``deferred`` (MariaDB only; ignored elsewhere): instead of running the messages INSERT now, append
    it to this list for the caller to send in one round trip with what follows (``run_deferred`` or the
    event-log append). It is then a plain INSERT: a row stored meanwhile by another writer makes it
    fail (IntegrityError) and the transaction must be rolled back and retried, rather than ignored.
    """
    fresh = _fresh_inbound(items)
    if not fresh:
        return []
    raw = sql.raw_mariadb(conn)
    await _drop_stored(conn, tenant_id, fresh, raw)
    if not fresh:
        return []
    addresses = None
    if contacts_db.needs_resolution(fresh.values()):
        addresses = await contacts_db.resolve_contacts(conn, tenant_id, fresh.values(), merged)
    now = utcnow()
    rows = _inbound_rows(tenant_id, fresh, now, addresses)
    conv_ids = await _conversation_ids(conn, tenant_id, _conversation_rows(tenant_id, rows, now), raw)
    for r in rows:
        r["conversation_id"] = conv_ids[r["_wa_id"]]
    return [_stored_row(r) for r in await _insert_rows(conn, tenant_id, rows, raw, deferred)]


# ------------------------------------------------------------------------ the fast path (MariaDB)


class InboundPlan:
    """One tenant's new inbound messages, prepared for the fast path. ``addresses``: the conversation
    address of each BSUID the items name (the writer knows them from earlier batches)."""

    __slots__ = ("conversations", "rows", "tenant_id")

    def __init__(
        self,
        tenant_id: str,
        items: Iterable[dict[str, Any]],
        now: dt.datetime,
        addresses: dict[str, str] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.rows = _inbound_rows(tenant_id, _fresh_inbound(items), now, addresses)
        self.conversations = _conversation_rows(tenant_id, self.rows, now)

    def wa_ids(self) -> list[str]:
        return [c["wa_id"] for c in self.conversations]

    def by_provider(self) -> dict[str, list[str]]:
        """The plan's provider message ids per provider."""
        out: dict[str, list[str]] = {}
        for r in self.rows:
            out.setdefault(r["provider"], []).append(r["provider_message_id"])
        return out

    def stored(self) -> list[tuple[dict[str, Any], Any]]:
        """(row, the item's ``to``) per stored message: the row as ``record_inbound_messages`` returns
        it, less the copy (the private ``_`` keys stay; readers use the public ones)."""
        out = []
        for r in self.rows:
            r["wa_id"], r["contact_name"] = r["_wa_id"], r["_contact_name"]
            out.append((r, r["_to"]))
        return out


async def learn_conversation_ids(driver: Any, plan: InboundPlan) -> dict[str, int]:
    """Upsert a plan's conversations on its own (some contact's id is not known); their ids."""
    statement = inbound_sql.upsert_conversations_sql(plan.conversations, returning=True)
    [(found, _)] = await sql.driver_round_trip(driver, [statement], what=_WHAT)
    return {wa_id: cid for cid, wa_id in found}


async def store_fast(
    conn: AsyncConnection,
    plans: Sequence[InboundPlan],
    ids: Sequence[dict[str, int]],
    *,
    upserted: bool,
    events: Callable[[], Sequence[events_db.NewEvent]],
) -> list[int]:
    """Write the plans (conversation ids ``ids``, one dict per plan) and their events in ONE round
    trip: the conversations upsert (unless ``upserted`` by ``learn_conversation_ids``), the plain
    messages INSERT, a look for changes waiting for these messages, and the event-log append.
    ``events()`` builds the event rows once the message rows know their conversations. Returns the
    events' seqs. Inside the caller's transaction; raises ``PendingChangesFound`` (roll it back and
    store the batch the careful way, which applies them) when a change was waiting."""
    statements = (
        []
        if upserted
        else [
            inbound_sql.upsert_conversations_sql(plan.conversations, returning=False, ids=plan_ids)
            for plan, plan_ids in zip(plans, ids, strict=True)
        ]
    )
    for plan, plan_ids in zip(plans, ids, strict=True):
        for r in plan.rows:
            r["conversation_id"] = plan_ids[r["_wa_id"]]
        statements.append(inbound_sql.insert_messages_sql(plan.rows, ignore=False))
    # After the INSERTs: a change another writer keeps pending for one of these is visible (an
    # InnoDB read view starts at the first plain read, and it waited for that writer's lock).
    statements.append(
        " UNION ALL ".join(message_changes.pending_targets_sql(p.tenant_id, p.by_provider()) for p in plans)
    )
    results: list[sql.Result] = []
    seqs = await events_db.append_events(conn, events(), before=statements, before_results=results)
    if results[-1][0]:
        raise message_changes.PendingChangesFound()
    return seqs


async def run_deferred(conn: AsyncConnection, deferred: list[str]) -> None:
    """Send statements ``record_inbound_messages`` deferred (one round trip); empties the list."""
    if deferred:
        statements, deferred[:] = list(deferred), []
        await sql.round_trip(conn, statements, what=_WHAT)


async def append_after(
    conn: AsyncConnection, deferred: list[str], events: Sequence[events_db.NewEvent]
) -> list[int]:
    """The statements ``record_inbound_messages`` deferred, then the event-log append of ``events``,
    in one round trip (MariaDB); returns the events' seqs. Inside the caller's transaction."""
    return await events_db.append_events(conn, events, before=deferred)
