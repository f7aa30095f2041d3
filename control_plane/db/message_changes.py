"""Edits, revokes (delete for everyone) and reactions: changes to a message that is stored already.

A change never becomes a message row of its own. It updates the ORIGINAL message (``messages``
columns ``content``, ``edited_at``, ``deleted_at``, ``reactions``) and is kept in
``message_changes``, once per (tenant, provider, the change's own provider id): that table is the
message's history, and a redelivered change (same id) changes nothing.

    kind      what it does to the message                     payload kept in message_changes
    edit      content replaced, edited_at = when               {"content", "previous_content"}
    revoke    deleted_at = when, content becomes null          {"previous_content"}
    reaction  reactions: one {from, emoji, timestamp} per      {"emoji", "previous_emoji"}
              reactor; an empty emoji removes that reactor's

A revoke blanks the row's content: the sender asked WhatsApp to delete the message for everyone,
and everyone (WhatsApp's own apps included) now sees "this message was deleted"; the gateway shows
the same. What it said is not lost: the revoke's ``previous_content`` (and every edit's) stays here
(``list_message_changes``).

``when`` is the provider's time of the change (else the time it was stored). A change that would
move the message back is recorded (``applied_at`` set, ``payload.skipped`` says why) but not
applied or published: a reaction older than the reactor's current one, an edit older than the
message's last edit, an edit or a revoke of a revoked message, removing a reaction nobody made.

Unknown targets: a change whose message is not stored (it arrived first, or it refers to a message
from before the gateway) is kept with ``message_id`` NULL, pending; the inbound writer applies it,
in arrival order, when it stores the target (``apply_pending``; the MariaDB fast path only looks:
``pending_targets_sql``). A send of ours that learns its wamid later (``db/outbox``) does not
look: a contact cannot react to a message before it reached them.

Each batch function issues a fixed handful of statements whatever the batch size (the messages and
the changes are updated with one ``UPDATE ... CASE id`` each), on MariaDB and SQLite. Targets are
read with a lock (MariaDB), so two writers changing one message take turns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import CONTACT_ID_LEN, BigId, conversations
from control_plane.db.engine import utcnow
from control_plane.db.messages import PROVIDER_ID_LEN, dump_json, load_json, messages
from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata
from control_plane.db.sql import literal_str, round_trip
from control_plane.events import format_ts

KINDS = ("edit", "revoke", "reaction")
ACTOR_LEN = CONTACT_ID_LEN  # a wa_id or chat id, whole

message_changes = sa.Table(
    "message_changes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # Our id of the changed message; NULL while the change waits for its target (pending).
    sa.Column("message_id", sa.String(32), nullable=True),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("target_provider_message_id", sa.String(PROVIDER_ID_LEN), nullable=False),
    # The change's own provider id (the reaction's or the edit's wamid, the Web event's id).
    sa.Column("provider_change_id", sa.String(PROVIDER_ID_LEN), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(ACTOR_LEN), nullable=True),
    sa.Column("payload", LongText, nullable=True),
    sa.Column("occurred_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("applied_at", Timestamp, nullable=True),
    sa.UniqueConstraint("tenant_id", "provider", "provider_change_id"),
    sa.Index(
        "ix_message_changes_tenant_id_provider_target_provider_message_id",
        "tenant_id",
        "provider",
        "target_provider_message_id",
    ),
    sa.Index("ix_message_changes_tenant_id_message_id", "tenant_id", "message_id"),
)


class PendingChangesFound(Exception):
    """The fast path stored a message some change was waiting for: roll back, take the careful path."""


# ---------------------------------------------------------------------------------------- reading


def decode_reactions(value: Any) -> list[dict[str, Any]]:
    """A message row's ``reactions`` (JSON text or NULL) as the list events and the API show."""
    if isinstance(value, list):
        return value
    decoded = load_json(value) if isinstance(value, str) else None
    return decoded if isinstance(decoded, list) else []


async def list_message_changes(
    conn: AsyncConnection, tenant_id: str, message_id: str
) -> list[dict[str, Any]]:
    """One message's changes, in the order they were applied (its content history)."""
    c = message_changes.c
    result = await conn.execute(
        sa.select(message_changes)
        .where(c.tenant_id == tenant_id, c.message_id == message_id)
        .order_by(c.applied_at, c.id)
    )
    out = []
    for row in result:
        item = dict(row._mapping)
        item["payload"] = load_json(item["payload"])
        out.append(item)
    return out


# --------------------------------------------------------------------------------- new changes


async def record_changes(
    conn: AsyncConnection, tenant_id: str, items: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Record changes once per (tenant, provider, provider_message_id), in the given order, and apply
    each to its target message when it is stored (else keep it pending).

    Each item: ``provider``, ``provider_message_id`` (the change's own id),
    ``target_provider_message_id``, ``kind`` (edit | revoke | reaction), ``actor`` (who), and per
    kind ``emoji`` (reaction; "" or None removes), ``content`` (edit: the new content object) or
    ``text`` (edit: the new text or caption, merged into the old content), ``occurred_at`` (naive UTC).

    Returns what moved a message, in order (``change_results``' shape), for the events."""
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        if item.get("kind") in KINDS and item.get("provider_message_id"):
            fresh.setdefault((item["provider"], item["provider_message_id"]), item)
    if not fresh or not await _drop_recorded(conn, tenant_id, fresh):
        return []
    targets = await _lock_targets(
        conn,
        tenant_id,
        {(p, i["target_provider_message_id"]) for (p, _), i in fresh.items()},
    )
    now = utcnow()
    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for (provider, pmid), item in fresh.items():
        target_id = item["target_provider_message_id"]
        change = _item_change(item)
        row = {
            "tenant_id": tenant_id,
            "message_id": None,
            "provider": provider,
            "target_provider_message_id": target_id,
            "provider_change_id": pmid,
            "kind": change["kind"],
            "actor": change["actor"],
            "payload": dump_json(change["data"]),
            "occurred_at": change["occurred_at"],
            "created_at": now,
            "applied_at": None,
        }
        msg = targets.get((provider, target_id))
        if msg is not None:
            payload, result = apply_change(msg, change, now)
            row.update(message_id=msg["id"], payload=dump_json(payload), applied_at=now)
            if result is not None:
                results.append(result)
        rows.append(row)
    await conn.execute(message_changes.insert(), rows)  # plain: a concurrent writer's twin fails it
    await _write_messages(conn, tenant_id, targets.values(), now)
    return results


async def _drop_recorded(conn: AsyncConnection, tenant_id: str, fresh: dict[tuple[str, str], Any]) -> bool:
    """Forget the changes recorded before (a redelivery); whether any is left."""
    c = message_changes.c
    result = await conn.execute(
        sa.select(c.provider, c.provider_change_id).where(
            c.tenant_id == tenant_id, c.provider_change_id.in_(sorted({k[1] for k in fresh}))
        )
    )
    for provider, pmid in result:
        fresh.pop((provider, pmid), None)
    return bool(fresh)


def _item_change(item: dict[str, Any]) -> dict[str, Any]:
    """A hand-over item as the change ``apply_change`` takes (``data``: what a pending row keeps)."""
    kind = item["kind"]
    if kind == "reaction":
        data: dict[str, Any] = {"emoji": item.get("emoji") or ""}
    elif kind == "edit" and item.get("content") is not None:
        data = {"content": item["content"]}
    elif kind == "edit":
        data = {"text": item.get("text") or ""}
    else:
        data = {}
    actor = item.get("actor")
    return {
        "kind": kind,
        "actor": str(actor) if actor is not None else None,  # whole (the parsers refuse longer)
        "occurred_at": item.get("occurred_at"),
        "data": data,
    }


# ------------------------------------------------------------------------------ pending changes


def pending_targets_sql(tenant_id: str, by_provider: dict[str, list[str]], *, lock: bool = False) -> str:
    """MariaDB: the statement listing pending changes waiting for any of these provider message ids
    (a row means: apply them, ``apply_pending``, whose read is its twin). ``lock``: a locking read,
    which sees what other writers committed after this transaction's first plain read."""
    targets = " OR ".join(
        f"(provider = {literal_str(provider)} AND target_provider_message_id IN "
        f"({','.join(map(literal_str, pmids))}))"
        for provider, pmids in by_provider.items()
    )
    return (
        f"SELECT target_provider_message_id FROM message_changes WHERE tenant_id = {literal_str(tenant_id)} "
        f"AND message_id IS NULL AND ({targets})" + (" FOR UPDATE" if lock else "")
    )


async def may_be_waiting(
    conn: AsyncConnection, tenant_id: str, stored: Sequence[dict[str, Any]], *, before: list[str] | None
) -> bool:
    """Whether a change may be waiting for messages just stored: False only when surely none is.
    ``before`` (MariaDB: the messages' deferred INSERTs, emptied) go first, in the same round trip
    as the look; elsewhere (None) this says True and ``apply_pending`` looks itself."""
    if before is None or not stored:
        return bool(stored)
    by_provider: dict[str, list[str]] = {}
    for r in stored:
        by_provider.setdefault(r["provider"], []).append(r["provider_message_id"])
    statements, before[:] = [*before, pending_targets_sql(tenant_id, by_provider, lock=True)], []
    results = await round_trip(conn, statements, what="pending message changes")
    return bool(results[-1][0])


async def waiting_changes(
    conn: AsyncConnection, tenant_id: str, stored: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The pending changes waiting for any of the messages ``stored`` (rows with ``provider`` and
    ``provider_message_id``), in arrival order, read with a lock: the read sees a change another
    writer committed while we stored its target (the Core twin of ``pending_targets_sql``)."""
    keys = {(r["provider"], r["provider_message_id"]) for r in stored if r.get("provider_message_id")}
    c = message_changes.c
    return await _locked_rows(
        conn, tenant_id, keys, c.target_provider_message_id, c.message_id.is_(None), order_by=(c.id,)
    )


async def _locked_rows(
    conn: AsyncConnection,
    tenant_id: str,
    keys: set[tuple[str, str]],
    id_column: sa.Column[Any],
    *where: Any,
    order_by: Sequence[Any],
) -> list[dict[str, Any]]:
    """The rows of ``id_column``'s table whose (provider, ``id_column``) is one of ``keys``, read
    with a lock (MariaDB; SQLite has one writer), in ``order_by`` order."""
    if not keys:
        return []
    table = id_column.table
    result = await conn.execute(
        sa.select(table)
        .where(
            table.c.tenant_id == tenant_id,
            table.c.provider.in_(sorted({k[0] for k in keys})),
            id_column.in_(sorted({k[1] for k in keys})),
            *where,
        )
        .order_by(*order_by)
        .with_for_update()
    )
    rows = (dict(r._mapping) for r in result)
    return [row for row in rows if (row["provider"], row[id_column.name]) in keys]


async def apply_pending(
    conn: AsyncConnection, tenant_id: str, stored: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Apply the pending changes waiting for messages just stored (``stored``: rows with ``provider``
    and ``provider_message_id``), in the order the changes arrived. Returns ``record_changes``'
    results. Call after the messages' INSERT ran, in the same transaction."""
    pending = await waiting_changes(conn, tenant_id, stored)
    if not pending:
        return []
    targets = await _lock_targets(
        conn, tenant_id, {(p["provider"], p["target_provider_message_id"]) for p in pending}
    )
    now = utcnow()
    updates: dict[Any, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for p in pending:
        msg = targets.get((p["provider"], p["target_provider_message_id"]))
        if msg is None:
            continue  # not stored after all: it stays pending
        data = load_json(p["payload"])
        change = {
            "kind": p["kind"],
            "actor": p["actor"],
            "occurred_at": p["occurred_at"],
            "data": data if isinstance(data, dict) else {},
        }
        payload, res = apply_change(msg, change, now)
        updates[p["id"]] = {"message_id": msg["id"], "payload": dump_json(payload), "applied_at": now}
        if res is not None:
            results.append(res)
    if updates:
        await conn.execute(_update_by_id(message_changes, tenant_id, updates))
    await _write_messages(conn, tenant_id, targets.values(), now)
    return results


# ----------------------------------------------------------------------------------- the targets


async def _lock_targets(
    conn: AsyncConnection, tenant_id: str, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored targets by (provider, provider message id), read with a lock (MariaDB): content
    and reactions decoded, ``wa_id`` and ``contact_name`` of their conversation added."""
    m = messages.c
    rows = await _locked_rows(
        conn, tenant_id, keys, m.provider_message_id, order_by=(m.provider, m.provider_message_id)
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for msg in rows:
        msg["content"] = load_json(msg["content"])
        msg["reactions"] = decode_reactions(msg.get("reactions"))
        msg["_dirty"] = False
        found[(msg["provider"], msg["provider_message_id"])] = msg
    if found:
        conv = conversations.c
        ids = sorted({msg["conversation_id"] for msg in found.values()})
        contacts = {
            cid: (wa_id, name)
            for cid, wa_id, name in await conn.execute(
                sa.select(conv.id, conv.wa_id, conv.contact_name).where(
                    conv.tenant_id == tenant_id, conv.id.in_(ids)
                )
            )
        }
        for msg in found.values():
            msg["wa_id"], msg["contact_name"] = contacts.get(msg["conversation_id"], (None, None))
    return found


async def _write_messages(
    conn: AsyncConnection, tenant_id: str, targets: Iterable[dict[str, Any]], now: dt.datetime
) -> None:
    """One UPDATE for every target a change moved."""
    updates = {
        msg["id"]: {
            "content": dump_json(msg["content"]),
            "edited_at": msg["edited_at"],
            "deleted_at": msg["deleted_at"],
            "reactions": dump_json(msg["reactions"]) if msg["reactions"] else None,
            "updated_at": now,
        }
        for msg in targets
        if msg["_dirty"]
    }
    if updates:
        await conn.execute(_update_by_id(messages, tenant_id, updates))


def _update_by_id(table: sa.Table, tenant_id: str, updates: dict[Any, dict[str, Any]]) -> sa.Update:
    """``UPDATE table SET col = CASE id WHEN ... END, ... WHERE tenant_id = ? AND id IN (...)``: rows
    with different values in one statement (every row of ``updates`` sets the same columns)."""
    columns = next(iter(updates.values())).keys()
    values = {
        col: sa.case(
            {key: sa.bindparam(None, row[col], type_=table.c[col].type) for key, row in updates.items()},
            value=table.c.id,
            else_=table.c[col],
        )
        for col in columns
    }
    return table.update().where(table.c.tenant_id == tenant_id, table.c.id.in_(list(updates))).values(values)


# ------------------------------------------------------------------------------- applying one


def apply_change(
    msg: dict[str, Any], change: dict[str, Any], now: dt.datetime
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Apply one change to a target ``msg`` (in place; ``content``/``reactions`` are replaced, never
    mutated, so earlier results keep their snapshot). Returns the payload to keep and the result to
    publish (None: recorded, not applied; the payload's ``skipped`` says why)."""
    kind, data, at = change["kind"], change["data"], change["occurred_at"]
    when = at or now
    if kind == "reaction":
        return _react(msg, change["actor"], data.get("emoji") or "", when)
    if msg["deleted_at"] is not None:
        return {**data, "skipped": "deleted"}, None
    previous = msg["content"]
    if kind == "revoke":
        msg.update(content=None, deleted_at=when, _dirty=True)
        return {"previous_content": previous}, _result(msg, "revoke", change["actor"], when)
    if msg["edited_at"] is not None and when < msg["edited_at"]:
        return {**data, "skipped": "stale"}, None
    new = data["content"] if "content" in data else _with_text(previous, msg["type"], data.get("text") or "")
    if (
        isinstance(previous, dict)
        and "context" in previous
        and isinstance(new, dict)
        and "context" not in new
    ):
        new = {**new, "context": previous["context"]}  # an edit keeps what the message replied to
    msg.update(content=new, edited_at=when, _dirty=True)
    return {"content": new, "previous_content": previous}, _result(
        msg, "edit", change["actor"], when, previous_content=previous
    )


def _react(
    msg: dict[str, Any], actor: str | None, emoji: str, when: dt.datetime
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    stamp = format_ts(when)
    reactions: list[dict[str, Any]] = msg["reactions"]
    old = next((r for r in reactions if r.get("from") == actor), None)
    if old is not None and str(old.get("timestamp") or "") > stamp:
        return {"emoji": emoji, "skipped": "stale"}, None
    if old is None and not emoji:
        return {"emoji": emoji, "skipped": "no reaction to remove"}, None
    kept = [r for r in reactions if r is not old]
    if emoji:
        entry = {"from": actor, "emoji": emoji, "timestamp": stamp}
        if old is None:
            kept.append(entry)
        else:
            kept.insert(reactions.index(old), entry)  # a reactor keeps its place
    msg.update(reactions=kept, _dirty=True)
    previous = old.get("emoji") if old else None
    result = _result(msg, "reaction", actor, when, emoji=emoji or previous, removed=not emoji)
    return {"emoji": emoji, "previous_emoji": previous}, result


def _with_text(previous: Any, kind: str, text: str) -> Any:
    """An edit that carries only the new text (Web): the text of a text message, else the caption."""
    if not isinstance(previous, dict):
        return {"text": text}
    if kind == "text" or "text" in previous:
        return {**previous, "text": text}
    return {**previous, "caption": text}


def _result(
    msg: dict[str, Any], kind: str, actor: str | None, when: dt.datetime, **extra: Any
) -> dict[str, Any]:
    """What ``record_changes``/``apply_pending`` return per applied change: ``kind``, ``message`` (the
    row as this change left it: content and reactions decoded, ``wa_id``, ``contact_name``),
    ``actor``, ``at``, and ``previous_content`` (edit) or ``emoji`` and ``removed`` (reaction: a
    removal names the emoji it took away)."""
    snapshot = {k: v for k, v in msg.items() if k[0] != "_"}
    return {"kind": kind, "message": snapshot, "actor": actor, "at": when, **extra}
