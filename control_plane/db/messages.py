"""Conversations, messages, message status events and Business API templates.

Shared by the Business API webhook (issue 5) and the messaging outbox (issue 6): one conversation per
(tenant, contact wa_id), one message row per message whichever provider carried it.

Status ladder (a message never moves backwards):
    queued -> sending -> sent -> failed -> delivered -> read -> played
``failed`` outranks ``sent`` (Meta reports failures after accepting) but not ``delivered``/``read``;
a failure is always recorded (error_code, error_message, failed_at) even when it cannot move the status.
Inbound messages are ``received``.

Batch functions (``record_inbound_messages``, ``apply_status_updates``) issue a fixed handful of
multi-row statements whatever the batch size: the webhook's group commit calls them once per tenant
per batch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.compact_json import dict_encoder
from control_plane.db import events as events_db
from control_plane.db.engine import utcnow
from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata
from control_plane.statuses import STATUS_RANK, STATUS_TIME_COLUMN, MessageStatus, status_rank

# BIGINT on MariaDB; INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

DIRECTIONS = ("inbound", "outbound")
PROVIDERS = ("web", "business_api")
STATUSES = tuple(MessageStatus)
PROVIDER_ID_LEN = 128

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("wa_id", sa.String(32), nullable=False),
    sa.Column("contact_name", sa.String(256), nullable=True),
    sa.Column("provider_last", sa.String(20), nullable=True),
    sa.Column("last_inbound_at", Timestamp, nullable=True),
    sa.Column("last_message_at", Timestamp, nullable=True),
    sa.Column("last_message_id", sa.String(32), nullable=True),
    sa.Column("unread_count", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "wa_id"),
    sa.Index("ix_conversations_tenant_id_last_message_at", "tenant_id", "last_message_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "conversation_id", BigId, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("direction", sa.String(10), nullable=False),
    sa.Column("provider", sa.String(20), nullable=True),
    sa.Column("provider_message_id", sa.String(PROVIDER_ID_LEN), nullable=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("content", LongText, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("sent_at", Timestamp, nullable=True),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.Column("read_at", Timestamp, nullable=True),
    sa.Column("failed_at", Timestamp, nullable=True),
    sa.Column("provider_timestamp", Timestamp, nullable=True),
    sa.UniqueConstraint("tenant_id", "provider", "provider_message_id"),
    sa.Index(
        "ix_messages_tenant_id_conversation_id_created_at_id",
        "tenant_id",
        "conversation_id",
        "created_at",
        "id",
    ),
)

message_statuses = sa.Table(
    "message_statuses",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # Our message id when the wamid was known at arrival; NULL for a status that beat its message.
    sa.Column("message_id", sa.String(32), nullable=True),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("provider_message_id", sa.String(PROVIDER_ID_LEN), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("occurred_at", Timestamp, nullable=True),
    sa.Column("recipient_id", sa.String(32), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("raw", LongText, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "provider_message_id", "status"),
    sa.Index("ix_message_statuses_tenant_id_message_id", "tenant_id", "message_id"),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("waba_id", sa.String(64), nullable=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("language", sa.String(16), nullable=False),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("category", sa.String(32), nullable=True),
    sa.Column("components", LongText, nullable=False),
    sa.Column("remote_id", sa.String(64), nullable=True),
    sa.Column("synced_at", Timestamp, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "name", "language"),
)


# --------------------------------------------------------------------------------------------- helpers

_NON_DIGITS = re.compile(r"\D")


def canonical_wa_id(number: str) -> str:
    """Digits only: ``+1 (650) 555-1234`` -> ``16505551234``. One conversation per canonical id."""
    return _NON_DIGITS.sub("", number or "")


def new_message_id() -> str:
    return uuid.uuid4().hex


def new_message_ids(n: int) -> list[str]:
    """``n`` message ids for one batch: UUIDs in RFC 9562's version 7 layout, as 32 hex characters
    like ``new_message_id()``: the first 48 bits are the Unix time in milliseconds, the other 74
    random (one read of the OS's randomness for the batch, ~1 us per id).

    Time first, so a batch's rows land at the right end of ``messages``' primary key (the clustered
    index) instead of at random pages across it: on the webhook bench MariaDB spent about half as
    much CPU per inserted row once the table held a few hundred thousand rows."""
    raw = bytearray(os.urandom(16 * n))
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    for i in range(0, 16 * n, 16):
        raw[i : i + 6] = stamp
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x70  # version 7
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122/9562 variant
    text = raw.hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


_ENCODE_DICT = dict_encoder(str)


def dump_json(value: Any) -> str:
    if type(value) is dict:
        return _ENCODE_DICT(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def load_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text}


def _clip(value: Any, length: int) -> Any:
    if isinstance(value, str) and len(value) > length:
        return value[:length]
    return value


def _insert(conn: AsyncConnection, table: sa.Table):
    """The dialect's INSERT (for ON DUPLICATE KEY / ON CONFLICT)."""
    if conn.dialect.name == "sqlite":
        return sqlite_dialect.insert(table)
    return mysql_dialect.insert(table)


def _insert_ignore(conn: AsyncConnection, table: sa.Table):
    """INSERT that skips rows hitting a unique key (a concurrent writer on another node)."""
    if conn.dialect.name == "sqlite":
        return table.insert().prefix_with("OR IGNORE")
    return table.insert().prefix_with("IGNORE")


def message_out(row: dict[str, Any]) -> dict[str, Any]:
    """A message row with its content decoded (what API and events show)."""
    out = dict(row)
    out["content"] = load_json(out.get("content"))
    return out


# --------------------------------------------------------------------------------------- conversations


async def get_or_create_conversation(
    conn: AsyncConnection,
    tenant_id: str,
    wa_id: str,
    *,
    contact_name: str | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """The tenant's conversation with this contact (created when missing; safe under concurrency)."""
    wa_id = canonical_wa_id(wa_id)
    if not wa_id:
        raise ValueError("wa_id must contain digits")
    now = utcnow()
    stmt = _insert(conn, conversations).values(
        tenant_id=tenant_id,
        wa_id=wa_id,
        contact_name=_clip(contact_name, 256),
        provider_last=provider,
        unread_count=0,
        created_at=now,
        updated_at=now,
    )
    if conn.dialect.name == "sqlite":
        stmt = stmt.on_conflict_do_nothing(index_elements=["tenant_id", "wa_id"])
    else:
        stmt = stmt.prefix_with("IGNORE")
    await conn.execute(stmt)
    changes: dict[str, Any] = {}
    if contact_name:
        changes["contact_name"] = _clip(contact_name, 256)
    if provider:
        changes["provider_last"] = provider
    if changes:
        await conn.execute(
            conversations.update()
            .where(conversations.c.tenant_id == tenant_id, conversations.c.wa_id == wa_id)
            .values(**changes)
        )
    return await get_conversation_by_wa_id(conn, tenant_id, wa_id)  # type: ignore[return-value]


async def get_conversation(
    conn: AsyncConnection, tenant_id: str, conversation_id: int
) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(conversations).where(
            conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id
        )
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def get_conversation_by_wa_id(
    conn: AsyncConnection, tenant_id: str, wa_id: str
) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(conversations).where(
            conversations.c.tenant_id == tenant_id, conversations.c.wa_id == canonical_wa_id(wa_id)
        )
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def adopt_canonical_wa_id(
    conn: AsyncConnection, tenant_id: str, conversation_id: int, old: str, new: str
) -> bool:
    """The Cloud API answered a send to ``old`` with the contact's canonical ``new`` id (Brazil's 9th
    digit): the conversation takes it, so the contact's replies (from ``new``) land in it. False when
    it already changed, or when another conversation of the tenant holds ``new`` (IntegrityError from
    the (tenant_id, wa_id) key: the caller's transaction is then to be rolled back)."""
    result = await conn.execute(
        sa.update(conversations)
        .where(
            conversations.c.tenant_id == tenant_id,
            conversations.c.id == conversation_id,
            conversations.c.wa_id == canonical_wa_id(old),
        )
        .values(wa_id=canonical_wa_id(new))
    )
    return result.rowcount == 1


async def list_conversations(
    conn: AsyncConnection, tenant_id: str, *, limit: int = 50, before: tuple[dt.datetime, int] | None = None
) -> list[dict[str, Any]]:
    """Newest activity first; ``before=(last_message_at, id)`` of the previous page's last row."""
    stmt = sa.select(conversations).where(conversations.c.tenant_id == tenant_id)
    if before is not None:
        at, cid = before
        stmt = stmt.where(
            sa.or_(
                conversations.c.last_message_at < at,
                sa.and_(conversations.c.last_message_at == at, conversations.c.id < cid),
            )
        )
    stmt = stmt.order_by(conversations.c.last_message_at.desc(), conversations.c.id.desc()).limit(limit)
    result = await conn.execute(stmt)
    return [dict(r._mapping) for r in result]


async def mark_conversation_read(conn: AsyncConnection, tenant_id: str, conversation_id: int) -> bool:
    result = await conn.execute(
        conversations.update()
        .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id)
        .values(unread_count=0, updated_at=utcnow())
    )
    return result.rowcount > 0


# -------------------------------------------------------------------------------------------- messages


async def get_message(conn: AsyncConnection, tenant_id: str, message_id: str) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(messages).where(messages.c.tenant_id == tenant_id, messages.c.id == message_id)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def get_message_by_provider_id(
    conn: AsyncConnection, tenant_id: str, provider: str, provider_message_id: str
) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(messages).where(
            messages.c.tenant_id == tenant_id,
            messages.c.provider == provider,
            messages.c.provider_message_id == provider_message_id,
        )
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def list_messages(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: int,
    *,
    limit: int = 50,
    before: tuple[dt.datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """A conversation's messages, newest first; ``before=(created_at, id)`` of the previous page's last."""
    stmt = sa.select(messages).where(
        messages.c.tenant_id == tenant_id, messages.c.conversation_id == conversation_id
    )
    if before is not None:
        at, mid = before
        stmt = stmt.where(
            sa.or_(messages.c.created_at < at, sa.and_(messages.c.created_at == at, messages.c.id < mid))
        )
    stmt = stmt.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit)
    result = await conn.execute(stmt)
    return [dict(r._mapping) for r in result]


async def create_outbound_message(
    conn: AsyncConnection,
    tenant_id: str,
    conversation_id: int,
    *,
    type: str,
    content: Any,
    message_id: str | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """A queued outbound message row (the messaging outbox adds its own columns/tables in 0005)."""
    now = utcnow()
    row = {
        "id": message_id or new_message_id(),
        "tenant_id": tenant_id,
        "conversation_id": conversation_id,
        "direction": "outbound",
        "provider": provider,
        "provider_message_id": None,
        "type": type,
        "content": dump_json(content),
        "status": "queued",
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(messages.insert().values(**row))
    await conn.execute(
        conversations.update()
        .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id)
        .values(last_message_at=now, last_message_id=row["id"], updated_at=now)
    )
    return row


async def advance_message_status(
    conn: AsyncConnection,
    tenant_id: str,
    message_id: str,
    status: str,
    *,
    at: dt.datetime | None = None,
    error_code: str | int | None = None,
    error_message: str | None = None,
    **columns: Any,
) -> dict[str, Any] | None:
    """Move one message forward on the ladder (never backwards); extra ``columns`` (provider,
    provider_message_id, ...) are set whatever the status. Returns the row after the change."""
    row = await get_message(conn, tenant_id, message_id)
    if row is None:
        return None
    values = dict(columns)
    values.update(
        _status_changes(
            row,
            [{"status": status, "occurred_at": at, "error_code": error_code, "error_message": error_message}],
        )
    )
    if values:
        values["updated_at"] = utcnow()
        await conn.execute(guarded_update(tenant_id, message_id, values))
        row.update(values)
    return row


_RANK_SQL = sa.case(STATUS_RANK, value=messages.c.status, else_=-1)


def guarded_update(tenant_id: str, message_id: str, changes: dict[str, Any]) -> sa.Update:
    """The UPDATE for ``_status_changes``, with the ladder enforced by the database as well: the status
    moves only up (whatever another writer committed since our read), each status time is set once."""
    values: dict[str, Any] = dict(changes)
    status = values.get("status")
    if status is not None:
        values["status"] = sa.case((status_rank(status) > _RANK_SQL, status), else_=messages.c.status)
    for column in set(STATUS_TIME_COLUMN.values()).intersection(values):
        values[column] = sa.func.coalesce(messages.c[column], values[column])
    return (
        messages.update()
        .where(messages.c.tenant_id == tenant_id, messages.c.id == message_id)
        .values(**values)
    )


def _status_changes(row: dict[str, Any], updates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Column changes that ``updates`` (status facts) make to a message ``row``: the status moves only
    up the ladder; each status time is filled once; a failure always records its error."""
    values: dict[str, Any] = {}
    current = row.get("status")
    for upd in updates:
        status = upd["status"]
        at = upd.get("occurred_at") or utcnow()
        if status_rank(status) > status_rank(values.get("status", current)):
            values["status"] = status
        col = STATUS_TIME_COLUMN.get(status)
        if col and row.get(col) is None and col not in values:
            values[col] = at
        if status == "failed":
            if upd.get("error_code") is not None:
                values["error_code"] = _clip(str(upd["error_code"]), 64)
            if upd.get("error_message") is not None:
                values["error_message"] = upd["error_message"]
    if values.get("status") == current:
        values.pop("status")
    return values


def _fresh_inbound(items: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Items keyed by (provider, provider_message_id); the first of duplicates in one batch wins."""
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        pmid = item["provider_message_id"]
        key = (item["provider"], pmid if len(pmid) <= PROVIDER_ID_LEN else pmid[:PROVIDER_ID_LEN])
        if key not in fresh:
            fresh[key] = item
    return fresh


def _inbound_rows(
    tenant_id: str, fresh: dict[tuple[str, str], dict[str, Any]], now: dt.datetime
) -> list[dict[str, Any]]:
    """Message rows for new inbound items (``_wa_id``/``_contact_name`` for the conversations),
    oldest first."""
    rows: list[dict[str, Any]] = []
    ids = new_message_ids(len(fresh))
    for mid, ((provider, pmid), item) in zip(ids, fresh.items()):
        wa_id = item["wa_id"]
        if not wa_id.isdigit() or not wa_id.isascii():
            wa_id = canonical_wa_id(wa_id) or "0"
        kind = item.get("type") or "unknown"
        rows.append(
            {
                "id": mid,
                "tenant_id": tenant_id,
                "conversation_id": None,
                "direction": "inbound",
                "provider": provider,
                "provider_message_id": pmid,
                "type": kind if len(kind) <= 32 else kind[:32],
                "content": dump_json(item.get("content")),
                "status": "received",
                "error_code": None,
                "error_message": None,
                "created_at": now,
                "updated_at": now,
                "provider_timestamp": item.get("provider_timestamp") or now,
                "_wa_id": wa_id if len(wa_id) <= 32 else wa_id[:32],
                "_contact_name": _clip(item.get("contact_name"), 256),
                "_content": item.get("content"),
                "_to": item.get("to"),
            }
        )
    if len(rows) > 1:
        rows.sort(key=lambda r: (r["provider_timestamp"], r["provider_message_id"]))
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
                "contact_name": None,
                "provider_last": r["provider"],
                "last_inbound_at": r["provider_timestamp"],
                "last_message_at": r["provider_timestamp"],
                "last_message_id": r["id"],
                "unread_count": 0,
                "created_at": now,
                "updated_at": now,
            }
        c["unread_count"] += 1
        if r["_contact_name"]:
            c["contact_name"] = r["_contact_name"]
        if r["provider_timestamp"] >= c["last_inbound_at"]:
            c["last_inbound_at"] = c["last_message_at"] = r["provider_timestamp"]
            c["last_message_id"] = r["id"]
            c["provider_last"] = r["provider"]
    return [convs[k] for k in sorted(convs)]


async def record_inbound_messages(
    conn: AsyncConnection,
    tenant_id: str,
    items: Iterable[dict[str, Any]],
    *,
    deferred: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Store inbound messages once per (tenant, provider, provider_message_id); create/refresh their
    conversations (contact name, last_inbound_at = the 24 h window, last message, unread count).

    Each item: ``provider``, ``provider_message_id``, ``wa_id``, ``type``, ``content`` (JSON-able),
    ``provider_timestamp`` (naive UTC), optional ``contact_name``. Returns the rows actually stored
    (new ones only, content decoded, ``wa_id`` and ``contact_name`` added), oldest first.

    ``deferred`` (MariaDB only; ignored elsewhere): instead of running the messages INSERT now, append
    it to this list for the caller to send in one round trip with what follows (``run_deferred`` or the
    event-log append). It is then a plain INSERT: a row stored meanwhile by another writer makes it
    fail (IntegrityError) and the transaction must be rolled back and retried, rather than ignored.
    """
    fresh = _fresh_inbound(items)
    if not fresh:
        return []
    by_provider: dict[str, list[str]] = {}
    for provider, pmid in fresh:
        by_provider.setdefault(provider, []).append(pmid)
    raw = raw_mariadb(conn)
    if raw:  # one statement for every provider, written out (no SQLAlchemy compile, no escaping)
        found, _ = await _driver_query(conn, _existing_wamids_sql(tenant_id, by_provider))
        for provider, pmid in found:
            fresh.pop((provider, pmid), None)
    else:
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
    if not fresh:
        return []

    now = utcnow()
    rows = _inbound_rows(tenant_id, fresh, now)
    conv_rows = _conversation_rows(tenant_id, rows, now)
    convs = {c["wa_id"]: c for c in conv_rows}
    if raw:  # MariaDB: the upsert returns the ids (one round trip, not two)
        conv_ids = {
            wa: cid for cid, wa in (await _driver_query(conn, _upsert_conversations_sql(conv_rows)))[0]
        }
    else:
        await _upsert_conversations(conn, conv_rows)
        result = await conn.execute(
            sa.select(conversations.c.id, conversations.c.wa_id).where(
                conversations.c.tenant_id == tenant_id, conversations.c.wa_id.in_(list(convs))
            )
        )
        conv_ids = {wa: cid for cid, wa in result}
    for r in rows:
        r["conversation_id"] = conv_ids[r["_wa_id"]]

    if raw and deferred is not None:
        deferred.append(_insert_messages_sql(rows, ignore=False))
        insert_rows, inserted = rows, len(rows)  # all or nothing: see the docstring
    elif raw:
        _, inserted = await _driver_query(conn, _insert_messages_sql(rows))
        insert_rows = rows
    else:
        insert_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        inserted = (await conn.execute(_insert_ignore(conn, messages), insert_rows)).rowcount
    if inserted is not None and 0 <= inserted < len(insert_rows):
        # Another node stored some of these between our check and our insert: keep only ours.
        got = await conn.execute(
            sa.select(messages.c.id).where(
                messages.c.tenant_id == tenant_id, messages.c.id.in_([r["id"] for r in rows])
            )
        )
        mine = {mid for (mid,) in got}
        rows = [r for r in rows if r["id"] in mine]
    return [_stored_row(r) for r in rows]


def _stored_row(r: dict[str, Any]) -> dict[str, Any]:
    """What ``record_inbound_messages`` returns for a stored row: content decoded, wa_id and contact_name."""
    stored = {k: v for k, v in r.items() if k[0] != "_"}
    stored["content"] = load_json(r["content"]) if r.get("_content") is None else r["_content"]
    stored["wa_id"] = r["_wa_id"]
    stored["contact_name"] = r["_contact_name"]
    return stored


# ---- MariaDB hot path (webhook ingest): statements written out once, values inlined as literals.
# SQLAlchemy Core compiles the multi-row constructs afresh per batch and the driver escapes every
# parameter in Python; together they cost more CPU than MariaDB spends on the statements. Strings go
# as ``_utf8mb4 X'<hex>'`` (nothing to escape whatever the sql_mode; the column's collation applies,
# so the unique indexes serve the lookups), datetimes and integers as digits.


async def _driver_query(conn: AsyncConnection, sql: str) -> tuple[list[tuple], int]:
    """Run one parameterless statement on ``conn``'s driver connection, inside its transaction (no
    SQLAlchemy statement machinery); returns (rows, rowcount). Driver errors come out as SQLAlchemy's."""
    raw = await conn.get_raw_connection()
    try:
        async with raw.driver_connection.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall()), cur.rowcount
    except Exception as exc:
        translated = events_db.as_sqlalchemy_error(exc, "webhook ingest")
        if translated is exc:
            raise
        raise translated from exc


async def run_deferred(conn: AsyncConnection, deferred: list[str]) -> None:
    """Send statements ``record_inbound_messages`` deferred (one round trip); empties the list."""
    if not deferred:
        return
    sql, deferred[:] = ";".join(deferred), []
    raw = await conn.get_raw_connection()
    try:
        async with raw.driver_connection.cursor() as cur:
            await cur.execute(sql)
            while await cur.nextset():
                pass
    except Exception as exc:
        translated = events_db.as_sqlalchemy_error(exc, "webhook ingest")
        if translated is exc:
            raise
        raise translated from exc


def raw_mariadb(conn: AsyncConnection) -> bool:
    """MariaDB >= 10.5 (INSERT ... RETURNING): the raw statements below apply."""
    dialect = conn.dialect
    return (
        dialect.name in ("mysql", "mariadb")
        and bool(getattr(dialect, "is_mariadb", False))
        and (dialect.server_version_info or ()) >= (10, 5)
    )


# ---- The webhook's fast path (MariaDB): no duplicate check before writing. The batch's statements go
# out in one round trip with the event-log append (``append_many(before=...)``): the conversations
# upsert and a PLAIN messages INSERT, so a wamid stored before (a redelivery) fails the INSERT
# (IntegrityError) and the caller rolls everything back and stores the batch the careful way
# (``record_inbound_messages``). Conversation ids come from the caller's cache; contacts it does not
# know are upserted first, in their own round trip, to learn theirs.


class InboundPlan:
    """One tenant's new inbound messages, prepared for the fast path."""

    __slots__ = ("conversations", "rows", "tenant_id")

    def __init__(self, tenant_id: str, items: Iterable[dict[str, Any]], now: dt.datetime) -> None:
        self.tenant_id = tenant_id
        self.rows = _inbound_rows(tenant_id, _fresh_inbound(items), now)
        self.conversations = _conversation_rows(tenant_id, self.rows, now)

    def wa_ids(self) -> list[str]:
        return [c["wa_id"] for c in self.conversations]

    def upsert_conversations_sql(self, *, returning: bool, ids: dict[str, int] | None = None) -> str:
        """The conversations upsert (``returning``: the ids come back as (id, wa_id) rows; ``ids``:
        the conversations' ids, when every one is known)."""
        return _upsert_conversations_sql(self.conversations, returning=returning, ids=ids)

    def insert_messages_sql(self, conversation_ids: dict[str, int]) -> str:
        """The plain multi-row INSERT (fails on a wamid stored before), with the conversations' ids."""
        for r in self.rows:
            r["conversation_id"] = conversation_ids[r["_wa_id"]]
        return _insert_messages_sql(self.rows, ignore=False)

    def stored(self) -> list[tuple[dict[str, Any], Any]]:
        """(row, the item's ``to``) per stored message: the row as ``record_inbound_messages`` returns
        it, less the copy (the private ``_`` keys stay; readers use the public ones)."""
        out = []
        for r in self.rows:
            r["wa_id"], r["contact_name"] = r["_wa_id"], r["_contact_name"]
            out.append((r, r["_to"]))
        return out


async def driver_fetch(driver: Any, sql: str) -> list[tuple]:
    """Run one statement on a driver (aiomysql) connection inside its transaction; its rows.
    Driver errors come out as SQLAlchemy's."""
    try:
        async with driver.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall())
    except Exception as exc:
        translated = events_db.as_sqlalchemy_error(exc, "webhook ingest")
        if translated is exc:
            raise
        raise translated from exc


def _lit(value: str | None) -> str:
    if value is None:
        return "NULL"
    if not value:
        return "''"
    return "_utf8mb4 X'" + value.encode().hex() + "'"


def _lit_dt(value: dt.datetime | None) -> str:
    # Like the driver's escape_datetime: the wall-clock digits (values are naive UTC here).
    if value is None:
        return "NULL"
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return "'" + value.isoformat(" ", "microseconds") + "'"


def _existing_wamids_sql(tenant_id: str, by_provider: dict[str, list[str]]) -> str:
    tenant = _lit(tenant_id)
    return " UNION ALL ".join(
        f"SELECT provider, provider_message_id FROM messages WHERE tenant_id = {tenant} AND provider = "
        f"{_lit(provider)} AND provider_message_id IN ({','.join(map(_lit, pmids))})"
        for provider, pmids in by_provider.items()
    )


_CONV_UPSERT_HEAD = (
    "INSERT INTO conversations (tenant_id, wa_id, contact_name, provider_last, last_inbound_at, "
    "last_message_at, last_message_id, unread_count, created_at, updated_at) VALUES "
)
_CONV_UPSERT_HEAD_IDS = _CONV_UPSERT_HEAD.replace("updated_at)", "updated_at, id)", 1)
# The same SET list as ``_upsert_conversations`` (order matters: MariaDB applies it left to right).
_CONV_UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE contact_name = COALESCE(VALUES(contact_name), conversations.contact_name), "
    "provider_last = VALUES(provider_last), "
    "last_message_id = IF(conversations.last_message_at IS NULL OR VALUES(last_message_at) >= "
    "conversations.last_message_at, VALUES(last_message_id), conversations.last_message_id), "
    "last_message_at = IF(conversations.last_message_at IS NULL OR VALUES(last_message_at) >= "
    "conversations.last_message_at, VALUES(last_message_at), conversations.last_message_at), "
    "last_inbound_at = IF(conversations.last_inbound_at IS NULL OR VALUES(last_inbound_at) > "
    "conversations.last_inbound_at, VALUES(last_inbound_at), conversations.last_inbound_at), "
    "unread_count = conversations.unread_count + VALUES(unread_count), updated_at = VALUES(updated_at)"
)


def _upsert_conversations_sql(
    rows: list[dict[str, Any]], *, returning: bool = True, ids: dict[str, int] | None = None
) -> str:
    """``ids`` (wa_id -> the conversation's id, when known): the rows carry their ids, so InnoDB finds
    each duplicate on the primary key at once. Without them it first inserts the row into the
    clustered index under a fresh auto-increment id, meets the duplicate on (tenant_id, wa_id) and
    takes that insert back before updating: about a third more of MariaDB's CPU for the upsert."""
    lits: dict[Any, str] = {}  # the tenant and the batch's times repeat across rows

    def lit(value: Any) -> str:
        text = lits.get(value)
        if text is None:
            text = lits[value] = _lit_dt(value) if isinstance(value, dt.datetime) else _lit(value)
        return text

    values = ",".join(
        f"({lit(c['tenant_id'])},{_lit(c['wa_id'])},{lit(c['contact_name'])},{lit(c['provider_last'])},"
        f"{lit(c['last_inbound_at'])},{lit(c['last_message_at'])},{_lit(c['last_message_id'])},"
        f"{int(c['unread_count'])},{lit(c['created_at'])},{lit(c['updated_at'])}"
        + (f",{int(ids[c['wa_id']])})" if ids is not None else ")")
        for c in rows
    )
    head = _CONV_UPSERT_HEAD if ids is None else _CONV_UPSERT_HEAD_IDS
    return head + values + (_CONV_UPSERT_TAIL + " RETURNING id, wa_id" if returning else _CONV_UPSERT_TAIL)


_MESSAGES_INSERT_HEAD = (
    "INSERT IGNORE INTO messages (id, tenant_id, conversation_id, direction, provider, "
    "provider_message_id, type, content, status, error_code, error_message, created_at, "
    "updated_at, provider_timestamp) VALUES "
)


def _insert_messages_sql(rows: list[dict[str, Any]], *, ignore: bool = True) -> str:
    lits: dict[Any, str] = {}  # tenant, direction, status and times repeat across a batch's rows

    def lit(value: Any) -> str:
        text = lits.get(value)
        if text is None:
            text = lits[value] = _lit_dt(value) if isinstance(value, dt.datetime) else _lit(value)
        return text

    head = _MESSAGES_INSERT_HEAD if ignore else _MESSAGES_INSERT_HEAD.replace("INSERT IGNORE", "INSERT", 1)
    return head + ",".join(
        f"({_lit(r['id'])},{lit(r['tenant_id'])},{int(r['conversation_id'])},{lit(r['direction'])},"
        f"{lit(r['provider'])},{_lit(r['provider_message_id'])},{lit(r['type'])},{_lit(r['content'])},"
        f"{lit(r['status'])},{lit(r['error_code'])},{lit(r['error_message'])},{lit(r['created_at'])},"
        f"{lit(r['updated_at'])},{lit(r['provider_timestamp'])})"
        for r in rows
    )


async def _upsert_conversations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Multi-row upsert: counts add up, times only move forward, names are kept when absent."""
    if conn.dialect.name == "sqlite":
        stmt = sqlite_dialect.insert(conversations)
        ex = stmt.excluded
        c = conversations.c
        newer = sa.or_(c.last_message_at.is_(None), ex.last_message_at >= c.last_message_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "wa_id"],
            set_={
                "contact_name": sa.func.coalesce(ex.contact_name, c.contact_name),
                "provider_last": ex.provider_last,
                "last_message_id": sa.case((newer, ex.last_message_id), else_=c.last_message_id),
                "last_message_at": sa.case((newer, ex.last_message_at), else_=c.last_message_at),
                "last_inbound_at": sa.case(
                    (
                        sa.or_(c.last_inbound_at.is_(None), ex.last_inbound_at > c.last_inbound_at),
                        ex.last_inbound_at,
                    ),
                    else_=c.last_inbound_at,
                ),
                "unread_count": c.unread_count + ex.unread_count,
                "updated_at": ex.updated_at,
            },
        )
    else:
        stmt = mysql_dialect.insert(conversations)
        ins = stmt.inserted
        c = conversations.c
        newer = sa.or_(c.last_message_at.is_(None), ins.last_message_at >= c.last_message_at)
        # MariaDB evaluates SET left to right with updated values visible: last_message_id must be
        # decided before last_message_at changes. Passing a list keeps that order.
        stmt = stmt.on_duplicate_key_update(
            [
                ("contact_name", sa.func.coalesce(ins.contact_name, c.contact_name)),
                ("provider_last", ins.provider_last),
                ("last_message_id", sa.func.IF(newer, ins.last_message_id, c.last_message_id)),
                ("last_message_at", sa.func.IF(newer, ins.last_message_at, c.last_message_at)),
                (
                    "last_inbound_at",
                    sa.func.IF(
                        sa.or_(c.last_inbound_at.is_(None), ins.last_inbound_at > c.last_inbound_at),
                        ins.last_inbound_at,
                        c.last_inbound_at,
                    ),
                ),
                ("unread_count", c.unread_count + ins.unread_count),
                ("updated_at", ins.updated_at),
            ]
        )
    await conn.execute(stmt, rows)


async def apply_status_updates(
    conn: AsyncConnection, tenant_id: str, updates: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Record status facts once per (tenant, provider_message_id, status) and move their messages up
    the ladder (never back). Each update: ``provider``, ``provider_message_id``, ``status``,
    ``occurred_at``, optional ``recipient_id``, ``error_code``, ``error_message``, ``raw`` (JSON-able).

    Returns one dict per newly recorded fact whose message is known: ``message_id``,
    ``conversation_id``, ``provider``, ``provider_message_id``, ``status`` (this fact), ``message_status``
    (the message's status afterwards), ``changed`` (the status moved), ``occurred_at``, ``error_code``,
    ``error_message``, ``recipient_id``. Facts for a wamid with no message yet are stored with
    ``message_id`` NULL; ``apply_recorded_statuses`` applies them once the message learns its wamid.
    """
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for upd in updates:
        if upd.get("status") not in STATUS_RANK:
            continue
        key = (_clip(upd["provider_message_id"], PROVIDER_ID_LEN), upd["status"])
        fresh.setdefault(key, upd)
    if not fresh:
        return []
    pmids = sorted({k[0] for k in fresh})
    result = await conn.execute(
        sa.select(message_statuses.c.provider_message_id, message_statuses.c.status).where(
            message_statuses.c.tenant_id == tenant_id, message_statuses.c.provider_message_id.in_(pmids)
        )
    )
    for pmid, status in result:
        fresh.pop((pmid, status), None)
    if not fresh:
        return []

    pmids = sorted({k[0] for k in fresh})
    providers = sorted({upd["provider"] for upd in fresh.values()})
    # A locking read (MariaDB): another transaction moving these messages commits first, and we read
    # what it left (the unique index (tenant, provider, wamid) finds, and locks, just these rows).
    result = await conn.execute(
        sa.select(messages)
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.provider.in_(providers),
            messages.c.provider_message_id.in_(pmids),
        )
        .order_by(messages.c.provider, messages.c.provider_message_id)
        .with_for_update()
    )
    known: dict[tuple[str | None, str], dict[str, Any]] = {}
    for row in result:
        m = dict(row._mapping)
        known[(m["provider"], m["provider_message_id"])] = m

    now = utcnow()
    status_rows = []
    per_message: dict[str, list[dict[str, Any]]] = {}
    for (pmid, status), upd in sorted(fresh.items()):
        msg = known.get((upd["provider"], pmid))
        status_rows.append(
            {
                "tenant_id": tenant_id,
                "message_id": msg["id"] if msg else None,
                "provider": upd["provider"],
                "provider_message_id": pmid,
                "status": status,
                "occurred_at": upd.get("occurred_at"),
                "recipient_id": _clip(upd.get("recipient_id"), 32),
                "error_code": _clip(str(upd["error_code"]), 64)
                if upd.get("error_code") is not None
                else None,
                "error_message": upd.get("error_message"),
                "raw": dump_json(upd["raw"]) if upd.get("raw") is not None else None,
                "created_at": now,
            }
        )
        if msg:
            per_message.setdefault(msg["id"], []).append(upd)
    await conn.execute(_insert_ignore(conn, message_statuses), status_rows)

    out: list[dict[str, Any]] = []
    by_id = {m["id"]: m for m in known.values()}
    for message_id, upds in per_message.items():
        msg = by_id[message_id]
        upds.sort(key=lambda u: status_rank(u["status"]))
        changes = _status_changes(msg, upds)
        before = msg["status"]
        if changes:
            changes["updated_at"] = now
            await conn.execute(guarded_update(tenant_id, message_id, changes))
            msg.update(changes)
        for upd in upds:
            out.append(
                {
                    "message_id": message_id,
                    "conversation_id": msg["conversation_id"],
                    "provider": msg["provider"],
                    "provider_message_id": msg["provider_message_id"],
                    "status": upd["status"],
                    "message_status": msg["status"],
                    "changed": msg["status"] != before and msg["status"] == upd["status"],
                    "occurred_at": upd.get("occurred_at"),
                    "recipient_id": upd.get("recipient_id"),
                    "error_code": upd.get("error_code"),
                    "error_message": upd.get("error_message"),
                }
            )
    return out


async def apply_recorded_statuses(
    conn: AsyncConnection, tenant_id: str, message_id: str
) -> dict[str, Any] | None:
    """Apply status facts that arrived before the message knew its provider id (a webhook racing the
    send response). Call after setting ``provider``/``provider_message_id``. Returns the row."""
    msg = await get_message(conn, tenant_id, message_id)
    if msg is None or not msg["provider_message_id"]:
        return msg
    result = await conn.execute(
        sa.select(message_statuses).where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.provider_message_id == msg["provider_message_id"],
            message_statuses.c.provider == msg["provider"],
        )
    )
    facts = [dict(r._mapping) for r in result]
    if not facts:
        return msg
    await conn.execute(
        message_statuses.update()
        .where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.provider_message_id == msg["provider_message_id"],
            message_statuses.c.message_id.is_(None),
        )
        .values(message_id=message_id)
    )
    facts.sort(key=lambda f: status_rank(f["status"]))
    changes = _status_changes(msg, facts)
    if changes:
        changes["updated_at"] = utcnow()
        await conn.execute(guarded_update(tenant_id, message_id, changes))
        msg.update(changes)
    return msg


async def list_status_events(conn: AsyncConnection, tenant_id: str, message_id: str) -> list[dict[str, Any]]:
    """The provider's status facts for one message, in arrival order (the history the API shows)."""
    result = await conn.execute(
        sa.select(message_statuses)
        .where(message_statuses.c.tenant_id == tenant_id, message_statuses.c.message_id == message_id)
        .order_by(message_statuses.c.id)
    )
    return [dict(r._mapping) for r in result]


# ------------------------------------------------------------------------------------------- templates


async def replace_templates(
    conn: AsyncConnection, tenant_id: str, waba_id: str | None, items: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Mirror the WABA's template list: upsert every (name, language); delete the tenant's templates the
    Graph API no longer lists. Items are Graph API template objects."""
    now = utcnow()
    existing = {
        (r.name, r.language): r.id
        for r in await conn.execute(
            sa.select(templates.c.id, templates.c.name, templates.c.language).where(
                templates.c.tenant_id == tenant_id
            )
        )
    }
    seen: set[tuple[str, str]] = set()
    created = updated = 0
    for item in items:
        name, language = str(item.get("name") or ""), str(item.get("language") or "")
        if not name or not language or (name, language) in seen:
            continue
        seen.add((name, language))
        values = {
            "waba_id": waba_id,
            "status": _clip(item.get("status"), 32),
            "category": _clip(item.get("category"), 32),
            "components": dump_json(item.get("components") or []),
            "remote_id": _clip(str(item["id"]), 64) if item.get("id") is not None else None,
            "synced_at": now,
            "updated_at": now,
        }
        if (name, language) in existing:
            await conn.execute(
                templates.update()
                .where(templates.c.tenant_id == tenant_id, templates.c.id == existing[(name, language)])
                .values(**values)
            )
            updated += 1
        else:
            await conn.execute(
                templates.insert().values(
                    tenant_id=tenant_id,
                    name=_clip(name, 255),
                    language=_clip(language, 16),
                    created_at=now,
                    **values,
                )
            )
            created += 1
    gone = [tid for key, tid in existing.items() if key not in seen]
    if gone:
        await conn.execute(
            templates.delete().where(templates.c.tenant_id == tenant_id, templates.c.id.in_(gone))
        )
    return {"created": created, "updated": updated, "deleted": len(gone), "total": len(seen)}


async def list_templates(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(templates)
        .where(templates.c.tenant_id == tenant_id)
        .order_by(templates.c.name, templates.c.language)
    )
    out = []
    for r in result:
        row = dict(r._mapping)
        row["components"] = load_json(row["components"]) or []
        out.append(row)
    return out


async def get_template(
    conn: AsyncConnection, tenant_id: str, name: str, language: str
) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(templates).where(
            templates.c.tenant_id == tenant_id, templates.c.name == name, templates.c.language == language
        )
    )
    row = result.first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["components"] = load_json(out["components"]) or []
    return out


async def update_template_status(
    conn: AsyncConnection, tenant_id: str, *, name: str, language: str | None, status: str
) -> int:
    """A ``message_template_status_update`` webhook: the named template's new status."""
    stmt = templates.update().where(templates.c.tenant_id == tenant_id, templates.c.name == name)
    if language:
        stmt = stmt.where(templates.c.language == language)
    result = await conn.execute(stmt.values(status=_clip(status, 32), updated_at=utcnow()))
    return result.rowcount
