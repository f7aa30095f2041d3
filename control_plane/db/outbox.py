"""The messaging outbox (issue 6): dispatch state beside each outbound message row, the history of
its transitions, and per-tenant messaging settings.

``outbox.state``::

    queued  -> sending (claimed: claimed_by/claimed_at is the lease) -> done
                 |  \\-> queued   (retryable error or pacing: next_attempt_at in the future)
                 \\--> unknown    (the provider may have it: a crash/timeout between send and answer;
                                   next_attempt_at = when to give up waiting for a confirmation and
                                   send again). Resolved by ``list_unknown`` + the sweeper.

The message row (``messages.status``) follows: queued -> sending -> sent -> delivered -> read, or
failed with the provider's code and message. Every change the dispatcher makes is a row in
``message_transitions`` with its reason (which road, why, which error).

Hot paths are batched: ``claim`` is four statements for N rows, ``record_outcomes`` a fixed handful
of statements (CASE-per-id updates, multi-row inserts) whatever the batch size.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import events as events_db
from control_plane.db.engine import utcnow
from control_plane.db.messages import (
    BigId,
    canonical_wa_id,
    conversations,
    dump_json,
    message_statuses,
    messages,
    new_message_id,
    raw_mariadb,
)
from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata  # noqa: F401

STATES = ("queued", "sending", "unknown", "done")
REQUESTED_PROVIDERS = ("auto", "web", "business_api")

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column(
        "message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("requested_provider", sa.String(20), nullable=False, default="auto"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_at", Timestamp, nullable=True),
    sa.Column("route_provider", sa.String(20), nullable=True),
    sa.Column("route_reason", sa.String(255), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "idempotency_key"),
    sa.Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
    sa.Index("ix_outbox_tenant_id_state_next_attempt_at", "tenant_id", "state", "next_attempt_at"),
)

message_transitions = sa.Table(
    "message_transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(20), nullable=True),
    sa.Column("reason", sa.String(255), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("at", Timestamp, nullable=False),
    sa.Index("ix_message_transitions_tenant_id_message_id", "tenant_id", "message_id"),
)

messaging_settings = sa.Table(
    "messaging_settings",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("fallback_template_name", sa.String(255), nullable=True),
    sa.Column("fallback_template_language", sa.String(16), nullable=True),
    sa.Column("fallback_template_body_param", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)


def _clip(value: Any, length: int) -> Any:
    if isinstance(value, str) and len(value) > length:
        return value[: length - 1] + "…"
    return value


def _transition(
    tenant_id: str,
    message_id: str,
    from_status: str | None,
    to_status: str,
    *,
    at: dt.datetime,
    provider: str | None = None,
    reason: str | None = None,
    error_code: Any = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "message_id": message_id,
        "from_status": from_status,
        "to_status": to_status,
        "provider": provider,
        "reason": _clip(reason, 255),
        "error_code": _clip(str(error_code), 64) if error_code is not None else None,
        "error_message": error_message,
        "at": at,
    }


# --------------------------------------------------------------------------------------------- enqueue


async def find_by_idempotency_key(conn: AsyncConnection, tenant_id: str, key: str) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(outbox).where(outbox.c.tenant_id == tenant_id, outbox.c.idempotency_key == key)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def enqueue(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    wa_id: str,
    type: str,
    content: Any,
    requested_provider: str = "auto",
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """Create the conversation (if new), the queued message row, its outbox row and its first
    transition. Raises IntegrityError when ``idempotency_key`` is already taken (a concurrent
    duplicate): the caller rolls back and reads the winner."""
    from control_plane.db import messages as messages_db

    now = utcnow()
    conv = await messages_db.get_or_create_conversation(conn, tenant_id, wa_id)
    row = await messages_db.create_outbound_message(
        conn, tenant_id, conv["id"], type=type, content=content, message_id=message_id or new_message_id()
    )
    await conn.execute(
        outbox.insert().values(
            message_id=row["id"],
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            requested_provider=requested_provider,
            state="queued",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    await conn.execute(
        message_transitions.insert().values(
            **_transition(
                tenant_id,
                row["id"],
                None,
                "queued",
                at=now,
                reason="accepted",
                provider=None if requested_provider == "auto" else requested_provider,
            )
        )
    )
    row["wa_id"] = conv["wa_id"]
    return row


async def enqueue_many(conn: AsyncConnection, tenant_id: str, items: Sequence[dict[str, Any]]) -> list[str]:
    """Bulk enqueue (benchmarks, campaigns): items ``{wa_id, type, content}``; no idempotency keys.
    Conversations are upserted; a fixed handful of multi-row statements."""
    now = utcnow()
    wa_ids = sorted({canonical_wa_id(i["wa_id"]) for i in items})
    insert = (
        sqlite_dialect.insert(conversations)
        if conn.dialect.name == "sqlite"
        else mysql_dialect.insert(conversations)
    )
    conv_rows = [
        {
            "tenant_id": tenant_id,
            "wa_id": w,
            "unread_count": 0,
            "created_at": now,
            "updated_at": now,
            "last_message_at": now,
        }
        for w in wa_ids
    ]
    if conn.dialect.name == "sqlite":
        stmt = insert.on_conflict_do_nothing(index_elements=["tenant_id", "wa_id"])
    else:
        stmt = insert.prefix_with("IGNORE")
    await conn.execute(stmt, conv_rows)
    result = await conn.execute(
        sa.select(conversations.c.id, conversations.c.wa_id).where(
            conversations.c.tenant_id == tenant_id, conversations.c.wa_id.in_(wa_ids)
        )
    )
    conv_ids = {w: cid for cid, w in result}
    ids, msg_rows, box_rows, tr_rows = [], [], [], []
    for i, item in enumerate(items):
        mid = new_message_id()
        ids.append(mid)
        at = now + dt.timedelta(microseconds=i)  # keeps creation order stable
        msg_rows.append(
            {
                "id": mid,
                "tenant_id": tenant_id,
                "conversation_id": conv_ids[canonical_wa_id(item["wa_id"])],
                "direction": "outbound",
                "provider": None,
                "provider_message_id": None,
                "type": item["type"],
                "content": dump_json(item["content"]),
                "status": "queued",
                "created_at": at,
                "updated_at": at,
            }
        )
        box_rows.append(
            {
                "message_id": mid,
                "tenant_id": tenant_id,
                "idempotency_key": None,
                "request_hash": None,
                "requested_provider": item.get("requested_provider", "auto"),
                "state": "queued",
                "attempts": 0,
                "next_attempt_at": at,
                "created_at": at,
                "updated_at": at,
            }
        )
        tr_rows.append(_transition(tenant_id, mid, None, "queued", at=at, reason="accepted"))
    await conn.execute(messages.insert(), msg_rows)
    await conn.execute(outbox.insert(), box_rows)
    await conn.execute(message_transitions.insert(), tr_rows)
    return ids


async def get_outbox(conn: AsyncConnection, tenant_id: str, message_id: str) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(outbox).where(outbox.c.tenant_id == tenant_id, outbox.c.message_id == message_id)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def list_transitions(conn: AsyncConnection, tenant_id: str, message_id: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(message_transitions)
        .where(message_transitions.c.tenant_id == tenant_id, message_transitions.c.message_id == message_id)
        .order_by(message_transitions.c.id)
    )
    return [dict(r._mapping) for r in result]


# --------------------------------------------------------------------------------------------- dispatch


async def due_tenants(conn: AsyncConnection, now: dt.datetime, *, limit: int = 1000) -> list[str]:
    """Tenants with queued rows whose time has come (any node may serve them).

    One index probe per tenant (``EXISTS`` on the tenant/state/time index), not a scan of every
    due row: with a backlog of 48,000 queued messages the DISTINCT over the due rows cost MariaDB
    ~100 ms per poll."""
    from control_plane.db.tenants import tenants

    due = (
        sa.select(sa.literal(1))
        .where(
            outbox.c.tenant_id == tenants.c.id, outbox.c.state == "queued", outbox.c.next_attempt_at <= now
        )
        .exists()
    )
    result = await conn.execute(sa.select(tenants.c.id).where(due).limit(limit))
    return [r[0] for r in result]


async def next_due_at(conn: AsyncConnection, tenant_id: str) -> dt.datetime | None:
    result = await conn.execute(
        sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
            outbox.c.tenant_id == tenant_id, outbox.c.state == "queued"
        )
    )
    return result.scalar()


async def bring_forward(conn: AsyncConnection, tenant_id: str, now: dt.datetime | None = None) -> int:
    """A road came back (the session is ready): waiting rows are due now."""
    now = now or utcnow()
    result = await conn.execute(
        outbox.update()
        .where(outbox.c.tenant_id == tenant_id, outbox.c.state == "queued", outbox.c.next_attempt_at > now)
        .values(next_attempt_at=now, updated_at=now)
    )
    return result.rowcount


async def claim(
    conn: AsyncConnection, tenant_id: str, node_id: str, *, limit: int, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due rows of one tenant for this node (MariaDB: ``FOR UPDATE SKIP LOCKED``,
    so nodes never claim the same row). Marks them ``sending`` (outbox and message) and returns them
    oldest first, each with its message's type/content and its conversation's wa_id/last_inbound_at.

    MariaDB: two round trips of written-out statements (pick and lock; then read, log the
    transitions and mark, in one multi-statement trip); elsewhere SQLAlchemy Core.

    The pick orders by ``next_attempt_at`` alone, the order of the (tenant, state, time) index: it
    reads and locks just ``limit`` rows. Adding ``created_at`` made MariaDB read, lock and sort
    the tenant's whole due backlog on every claim (4,800 row locks for a backlog of 2,400). Rows
    enqueued together get distinct times (``enqueue_many`` spaces them 1 µs apart); the claimed
    batch itself is returned sorted by (next_attempt_at, created_at)."""
    now = now or utcnow()
    if raw_mariadb(conn):
        return await _claim_raw(conn, tenant_id, node_id, limit, now)
    picked = await conn.execute(
        sa.select(outbox.c.message_id)
        .where(outbox.c.tenant_id == tenant_id, outbox.c.state == "queued", outbox.c.next_attempt_at <= now)
        .order_by(outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in picked]
    if not ids:
        return []
    result = await conn.execute(
        sa.select(
            outbox.c.message_id,
            outbox.c.attempts,
            outbox.c.requested_provider,
            outbox.c.created_at,
            outbox.c.next_attempt_at,
            messages.c.type,
            messages.c.content,
            messages.c.conversation_id,
            messages.c.status,
            conversations.c.wa_id,
            conversations.c.last_inbound_at,
            conversations.c.provider_last,
        )
        .join(messages, messages.c.id == outbox.c.message_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(ids))
    )
    rows = sorted((dict(r._mapping) for r in result), key=lambda r: (r["next_attempt_at"], r["created_at"]))
    await conn.execute(
        outbox.update()
        .where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(ids))
        .values(
            state="sending",
            claimed_by=node_id,
            claimed_at=now,
            attempts=outbox.c.attempts + 1,
            updated_at=now,
        )
    )
    await conn.execute(
        messages.update()
        .where(messages.c.tenant_id == tenant_id, messages.c.id.in_(ids), messages.c.status == "queued")
        .values(status="sending", updated_at=now)
    )
    await conn.execute(
        message_transitions.insert(),
        [
            _transition(
                tenant_id,
                r["message_id"],
                r["status"],
                "sending",
                at=now,
                reason=f"claimed by {node_id} (attempt {r['attempts'] + 1})",
            )
            for r in rows
        ],
    )
    for r in rows:
        r["attempts"] += 1
        r["content"] = json.loads(r["content"]) if r["content"] else None
    return rows


_CLAIM_COLUMNS = (
    "message_id",
    "attempts",
    "requested_provider",
    "created_at",
    "next_attempt_at",
    "type",
    "content",
    "conversation_id",
    "status",
    "wa_id",
    "last_inbound_at",
    "provider_last",
)


async def _claim_raw(
    conn: AsyncConnection, tenant_id: str, node_id: str, limit: int, now: dt.datetime
) -> list[dict[str, Any]]:
    t, at = _q(tenant_id), _q_dt(now)
    ((picked, _),) = await _run(
        conn,
        [
            f"SELECT message_id FROM outbox WHERE tenant_id = {t} AND state = 'queued' AND next_attempt_at <= {at} "
            f"ORDER BY next_attempt_at LIMIT {int(limit)} FOR UPDATE SKIP LOCKED"
        ],
    )
    if not picked:
        return []
    ids = ",".join([_q(r[0]) for r in picked])
    joined = (
        f"FROM outbox o JOIN messages m ON m.id = o.message_id "
        f"WHERE o.tenant_id = {t} AND o.message_id IN ({ids})"
    )
    # In this order: the transitions read each row as the claim finds it (its status, its attempt).
    (found, _), *_ = await _run(
        conn,
        [
            "SELECT o.message_id, o.attempts, o.requested_provider, o.created_at, o.next_attempt_at, m.type, "
            "m.content, m.conversation_id, m.status, c.wa_id, c.last_inbound_at, c.provider_last "
            f"{joined.replace(' WHERE', ' JOIN conversations c ON c.id = m.conversation_id WHERE', 1)}",
            "INSERT INTO message_transitions (tenant_id, message_id, from_status, to_status, reason, at) "
            f"SELECT m.tenant_id, m.id, m.status, 'sending', CONCAT({_q(_clip(f'claimed by {node_id}', 200))}, "
            f"' (attempt ', o.attempts + 1, ')'), {at} {joined} ORDER BY o.next_attempt_at, o.created_at",
            f"UPDATE outbox SET state = 'sending', claimed_by = {_q(node_id)}, claimed_at = {at}, "
            f"attempts = attempts + 1, updated_at = {at} WHERE tenant_id = {t} AND message_id IN ({ids})",
            f"UPDATE messages SET status = 'sending', updated_at = {at} "
            f"WHERE tenant_id = {t} AND id IN ({ids}) AND status = 'queued'",
        ],
    )
    rows = []
    loads = json.loads
    for values in found:
        r = dict(zip(_CLAIM_COLUMNS, values))
        r["attempts"] += 1
        r["content"] = loads(r["content"]) if r["content"] else None
        rows.append(r)
    rows.sort(key=lambda r: (r["next_attempt_at"], r["created_at"]))
    return rows


# ---- MariaDB hot paths: statements written out with the values inlined as literals and sent on the
# driver connection, several per round trip, inside the caller's transaction (as the webhook ingest
# does). SQLAlchemy Core compiles multi-row constructs afresh per batch and the driver escapes every
# parameter in Python; at a few thousand rows a second that was most of the dispatcher's CPU.


def _q(value: Any) -> str:
    """A SQL literal: strings of ASCII letters and digits as they are, any other string as
    ``_utf8mb4 X'<hex>'`` (nothing to escape whatever the sql_mode); numbers; datetimes."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        if value.isascii() and value.isalnum():
            return "'" + value + "'"
        return "_utf8mb4 X'" + value.encode().hex() + "'" if value else "''"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        return _q_dt(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def _q_dt(value: dt.datetime) -> str:
    # Like the driver's escape_datetime: the wall-clock digits (values are naive UTC here).
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return "'" + value.isoformat(" ", "microseconds") + "'"


async def _run(conn: AsyncConnection, statements: Sequence[str]) -> list[tuple[list[tuple], int]]:
    """Send ``statements`` in one round trip on ``conn``'s driver connection (inside its
    transaction); returns (rows, rowcount) per statement. Driver errors come out as SQLAlchemy's."""
    raw = await conn.get_raw_connection()
    out: list[tuple[list[tuple], int]] = []
    try:
        async with raw.driver_connection.cursor() as cur:
            await cur.execute(";".join(statements))
            out.append((list(await cur.fetchall() or ()), cur.rowcount))
            for _ in range(len(statements) - 1):
                await cur.nextset()
                out.append((list(await cur.fetchall() or ()), cur.rowcount))
    except Exception as exc:
        translated = events_db.as_sqlalchemy_error(exc, "messaging outbox")
        if translated is exc:
            raise
        raise translated from exc
    return out


CHUNK = 100  # rows per CASE statement: MariaDB evaluates CASE linearly, so a CASE over N rows costs N^2


def _case(ids_to_values: dict[str, Any], column: sa.Column, key: sa.Column) -> Any:
    return sa.case(ids_to_values, value=key, else_=column)


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _record_sent(
    conn: AsyncConnection, tenant_id: str, sent: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """The hot path (nearly every outcome): text statements, compiled cheaply, at most CHUNK rows per
    CASE; the outbox rows are updated per (provider, reason) group with a plain IN list."""
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for o in sent:
        by_provider.setdefault(o["provider"], []).append(o)
    for provider, group in sorted(by_provider.items()):
        for chunk in _chunks(group):
            whens = " ".join(f"WHEN :i{n} THEN :p{n}" for n in range(len(chunk)))
            at_whens = " ".join(f"WHEN :i{n} THEN :a{n}" for n in range(len(chunk)))
            ids = ", ".join(f":i{n}" for n in range(len(chunk)))
            params: dict[str, Any] = {"t": tenant_id, "now": now, "prov": provider}
            for n, o in enumerate(chunk):
                params[f"i{n}"] = o["message_id"]
                params[f"p{n}"] = o["provider_message_id"]
                params[f"a{n}"] = o.get("at") or now
            await conn.execute(
                sa.text(
                    f"UPDATE messages SET provider = :prov, provider_message_id = CASE id {whens} END, "
                    "status = CASE WHEN status IN ('queued', 'sending') THEN 'sent' ELSE status END, "
                    f"sent_at = COALESCE(sent_at, CASE id {at_whens} END), updated_at = :now "
                    f"WHERE tenant_id = :t AND id IN ({ids})"
                ),
                params,
            )
        conv_ids = sorted({o["conversation_id"] for o in group if o.get("conversation_id") is not None})
        for chunk in _chunks(conv_ids, 500):
            await conn.execute(
                conversations.update()
                .where(conversations.c.tenant_id == tenant_id, conversations.c.id.in_(list(chunk)))
                .values(provider_last=provider)
            )
    by_reason: dict[tuple[str, str], list[str]] = {}
    for o in sent:
        by_reason.setdefault((o["provider"], _clip(o.get("reason"), 255) or ""), []).append(o["message_id"])
    for (provider, reason), ids in sorted(by_reason.items()):
        for chunk in _chunks(ids, 500):
            await conn.execute(
                outbox.update()
                .where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(list(chunk)))
                .values(
                    state="done",
                    route_provider=provider,
                    route_reason=reason or None,
                    last_error=None,
                    updated_at=now,
                )
            )


async def record_sent(
    conn: AsyncConnection, items: Sequence[tuple[str, dict[str, Any]]], *, now: dt.datetime | None = None
) -> set[tuple[str, str]]:
    """Record sends the providers accepted, for any tenants: ``items`` are ``(tenant_id, outcome)``
    with outcomes of kind "sent" (``message_id``, ``provider``, ``provider_message_id``,
    ``conversation_id``, ``reason``, ``at`` = when the provider accepted it). The message becomes
    sent (unless a status already moved it on), the outbox row done, the transition logged.

    Returns the ``(tenant_id, provider_message_id)`` pairs that already have status facts stored
    without their message (a status webhook beat this record): the caller applies them.
    MariaDB: one round trip whatever the number of rows and tenants."""
    if not items:
        return set()
    now = now or utcnow()
    if raw_mariadb(conn):
        return await _record_sent_raw(conn, items, now)
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for tenant_id, o in items:
        by_tenant.setdefault(tenant_id, []).append(o)
    raced: set[tuple[str, str]] = set()
    for tenant_id, sent in sorted(by_tenant.items()):
        await record_outcomes(conn, tenant_id, sent, now=now)
        raced |= {
            (tenant_id, p)
            for p in await unmatched_status_ids(conn, tenant_id, [o["provider_message_id"] for o in sent])
        }
    return raced


async def _record_sent_raw(
    conn: AsyncConnection, items: Sequence[tuple[str, dict[str, Any]]], now: dt.datetime
) -> set[tuple[str, str]]:
    lit: dict[Any, str] = {}  # tenants, providers and reasons repeat: their literals once

    def q(value: Any) -> str:
        out = lit.get(value)
        if out is None:
            out = lit[value] = _q(value)
        return out

    at_now = _q_dt(now)
    values: list[tuple[str, str, str, str, str]] = []
    transitions: list[str] = []
    done: dict[tuple[str, str], list[str]] = {}  # (provider, reason) literals -> message id literals
    convs: dict[str, set[int]] = {}
    pmids: dict[str, list[str]] = {}
    for tenant_id, o in items:
        mid, t, prov = _q(o["message_id"]), q(tenant_id), q(o["provider"])
        at = _q_dt(o["at"]) if o.get("at") else at_now
        reason = q(_clip(o.get("reason"), 255) or None)
        values.append((mid, t, prov, _q(o["provider_message_id"]), at))
        transitions.append(f"({t},{mid},'sending','sent',{prov},{reason},{at})")
        done.setdefault((prov, reason), []).append(mid)
        if o.get("conversation_id") is not None:
            convs.setdefault(prov, set()).add(int(o["conversation_id"]))
        pmids.setdefault(t, []).append(_q(o["provider_message_id"]))
    # The rows as a derived table: the first names (and types) the columns, the rest follow as VALUES.
    derived = "SELECT {} AS id, {} AS t, {} AS p, {} AS w, CAST({} AS DATETIME(6)) AS a".format(*values[0])
    if len(values) > 1:
        derived += " UNION ALL VALUES " + ",".join(["(" + ",".join(v) + ")" for v in values[1:]])
    statements = [
        "SELECT DISTINCT tenant_id, provider_message_id FROM message_statuses WHERE message_id IS NULL AND ("
        + " OR ".join(
            f"(tenant_id = {t} AND provider_message_id IN ({','.join(ps)}))" for t, ps in pmids.items()
        )
        + ")",
        f"UPDATE messages m JOIN ({derived}) v ON m.id = v.id SET m.provider = v.p, m.provider_message_id = v.w, "
        "m.status = IF(m.status IN ('queued', 'sending'), 'sent', m.status), "
        f"m.sent_at = COALESCE(m.sent_at, v.a), m.updated_at = {at_now} WHERE m.tenant_id = v.t",
    ]
    statements += [
        f"UPDATE outbox SET state = 'done', route_provider = {prov}, route_reason = {reason}, "
        f"last_error = NULL, updated_at = {at_now} WHERE message_id IN ({','.join(ids)})"
        for (prov, reason), ids in sorted(done.items())
    ]
    statements += [
        f"UPDATE conversations SET provider_last = {prov} WHERE id IN ({','.join(map(str, sorted(ids)))}) "
        f"AND (provider_last IS NULL OR provider_last <> {prov})"
        for prov, ids in sorted(convs.items())
    ]
    statements.append(
        "INSERT INTO message_transitions (tenant_id, message_id, from_status, to_status, provider, "
        "reason, at) VALUES " + ",".join(transitions)
    )
    (raced, _), *_ = await _run(conn, statements)
    return {(t, p) for t, p in raced}


async def record_outcomes(
    conn: AsyncConnection,
    tenant_id: str,
    outcomes: Sequence[dict[str, Any]],
    *,
    now: dt.datetime | None = None,
    return_rows: bool = False,
) -> list[dict[str, Any]]:
    """Record what happened to claimed messages, in a handful of statements per ~100 rows.

    Each outcome: ``message_id``, ``kind`` (sent | failed | retry | defer | unknown), ``provider``,
    ``reason`` (the route reason, kept on the outbox row), and per kind ``provider_message_id`` and
    ``conversation_id``; ``error_code``/``error_message``; ``next_attempt_at``. With ``return_rows``,
    returns the message rows (after the change, with ``wa_id``) of sent and failed outcomes."""
    now = now or utcnow()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_kind.setdefault(o["kind"], []).append(o)
    transitions: list[dict[str, Any]] = []
    m, ob = messages.c, outbox.c

    sent = by_kind.get("sent", [])
    if sent:
        await _record_sent(conn, tenant_id, sent, now)
        transitions += [
            _transition(
                tenant_id,
                o["message_id"],
                "sending",
                "sent",
                at=o.get("at") or now,
                provider=o["provider"],
                reason=o.get("reason"),
            )
            for o in sent
        ]

    for failed in _chunks(by_kind.get("failed", [])):
        ids = [o["message_id"] for o in failed]
        codes = {
            o["message_id"]: _clip(str(o["error_code"]), 64) if o.get("error_code") is not None else None
            for o in failed
        }
        texts = {o["message_id"]: o.get("error_message") for o in failed}
        await conn.execute(
            messages.update()
            .where(m.tenant_id == tenant_id, m.id.in_(ids))
            .values(
                provider=_case({o["message_id"]: o.get("provider") for o in failed}, m.provider, m.id),
                status=sa.case((m.status.in_(("queued", "sending", "sent")), "failed"), else_=m.status),
                error_code=_case(codes, m.error_code, m.id),
                error_message=_case(texts, m.error_message, m.id),
                failed_at=sa.func.coalesce(m.failed_at, now),
                updated_at=now,
            )
        )
        await conn.execute(
            outbox.update()
            .where(ob.tenant_id == tenant_id, ob.message_id.in_(ids))
            .values(
                state="done",
                route_provider=_case(
                    {o["message_id"]: o.get("provider") for o in failed}, ob.route_provider, ob.message_id
                ),
                route_reason=_case(
                    {o["message_id"]: _clip(o.get("reason"), 255) for o in failed},
                    ob.route_reason,
                    ob.message_id,
                ),
                last_error=_case({i: f"{codes[i]}: {texts[i]}" for i in ids}, ob.last_error, ob.message_id),
                updated_at=now,
            )
        )
        transitions += [
            _transition(
                tenant_id,
                o["message_id"],
                "sending",
                "failed",
                at=now,
                provider=o.get("provider"),
                reason=o.get("reason"),
                error_code=o.get("error_code"),
                error_message=o.get("error_message"),
            )
            for o in failed
        ]

    for again in _chunks(by_kind.get("retry", []) + by_kind.get("defer", [])):
        ids = [o["message_id"] for o in again]
        deferred = [o["message_id"] for o in again if o["kind"] == "defer"]
        await conn.execute(
            messages.update()
            .where(m.tenant_id == tenant_id, m.id.in_(ids), m.status == "sending")
            .values(status="queued", updated_at=now)
        )
        await conn.execute(
            outbox.update()
            .where(ob.tenant_id == tenant_id, ob.message_id.in_(ids))
            .values(
                state="queued",
                claimed_by=None,
                next_attempt_at=_case(
                    {o["message_id"]: o["next_attempt_at"] for o in again}, ob.next_attempt_at, ob.message_id
                ),
                # Pacing is not an attempt: give back the one the claim counted.
                attempts=sa.case((ob.message_id.in_(deferred or ["-"]), ob.attempts - 1), else_=ob.attempts),
                last_error=_case(
                    {o["message_id"]: _clip(o.get("reason"), 2000) for o in again},
                    ob.last_error,
                    ob.message_id,
                ),
                updated_at=now,
            )
        )
        transitions += [
            _transition(
                tenant_id,
                o["message_id"],
                "sending",
                "queued",
                at=now,
                provider=o.get("provider"),
                reason=o.get("reason"),
                error_code=o.get("error_code"),
                error_message=o.get("error_message"),
            )
            for o in again
        ]

    for unknown in _chunks(by_kind.get("unknown", [])):
        ids = [o["message_id"] for o in unknown]
        await conn.execute(
            outbox.update()
            .where(ob.tenant_id == tenant_id, ob.message_id.in_(ids))
            .values(
                state="unknown",
                claimed_by=None,
                next_attempt_at=_case(
                    {o["message_id"]: o["next_attempt_at"] for o in unknown},
                    ob.next_attempt_at,
                    ob.message_id,
                ),
                route_provider=_case(
                    {o["message_id"]: o.get("provider") for o in unknown}, ob.route_provider, ob.message_id
                ),
                route_reason=_case(
                    {o["message_id"]: _clip(o.get("reason"), 255) for o in unknown},
                    ob.route_reason,
                    ob.message_id,
                ),
                last_error=_case(
                    {o["message_id"]: o.get("error_message") for o in unknown}, ob.last_error, ob.message_id
                ),
                updated_at=now,
            )
        )
        transitions += [
            _transition(
                tenant_id,
                o["message_id"],
                "sending",
                "sending",
                at=now,
                provider=o.get("provider"),
                reason="outcome unknown: " + (o.get("error_message") or ""),
            )
            for o in unknown
        ]

    if transitions:
        await conn.execute(message_transitions.insert(), transitions)
    done_ids = [o["message_id"] for o in sent + by_kind.get("failed", [])]
    if not return_rows or not done_ids:
        return []
    out: list[dict[str, Any]] = []
    for chunk in _chunks(done_ids, 500):
        result = await conn.execute(
            sa.select(messages, conversations.c.wa_id)
            .join(conversations, conversations.c.id == m.conversation_id)
            .where(m.tenant_id == tenant_id, m.id.in_(list(chunk)))
        )
        out += [dict(r._mapping) for r in result]
    return out


async def unmatched_status_ids(
    conn: AsyncConnection, tenant_id: str, provider_message_ids: Iterable[str]
) -> list[str]:
    """Which of these provider ids have status facts stored before their message knew its id."""
    pmids = [p for p in provider_message_ids if p]
    if not pmids:
        return []
    result = await conn.execute(
        sa.select(message_statuses.c.provider_message_id)
        .where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.message_id.is_(None),
            message_statuses.c.provider_message_id.in_(pmids),
        )
        .distinct()
    )
    return [r[0] for r in result]


async def orphan_status_message_ids(conn: AsyncConnection, tenant_id: str, since: dt.datetime) -> list[str]:
    """Messages that have status facts recorded without their id (a status raced its send's record)."""
    ms = message_statuses.c
    result = await conn.execute(
        sa.select(messages.c.id)
        .join(
            message_statuses,
            sa.and_(
                ms.tenant_id == messages.c.tenant_id,
                ms.provider == messages.c.provider,
                ms.provider_message_id == messages.c.provider_message_id,
            ),
        )
        .where(ms.tenant_id == tenant_id, ms.message_id.is_(None), ms.created_at >= since)
        .distinct()
        .limit(500)
    )
    return [r[0] for r in result]


# ------------------------------------------------------------------------------------ crash recovery


async def expire_leases(
    conn: AsyncConnection, cutoff: dt.datetime, decide_at: dt.datetime, *, limit: int = 1000
) -> int:
    """Rows left ``sending`` by a node that stopped answering (claimed before ``cutoff``) become
    ``unknown``: the provider may have them. They wait until ``decide_at`` for a confirmation.

    A row is claimed only once due, so ``next_attempt_at <= claimed_at``: the condition on it is
    implied and lets the (state, next_attempt_at) index skip rows claimed from a recent backlog
    (every poll otherwise read and locked each row in flight)."""
    picked = await conn.execute(
        sa.select(outbox.c.message_id)
        .where(outbox.c.state == "sending", outbox.c.next_attempt_at < cutoff, outbox.c.claimed_at < cutoff)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in picked]
    if not ids:
        return 0
    await conn.execute(
        outbox.update()
        .where(outbox.c.message_id.in_(ids))
        .values(
            state="unknown",
            next_attempt_at=decide_at,
            claimed_by=None,
            updated_at=utcnow(),
            last_error="lease expired: the node sending it stopped before recording the answer",
        )
    )
    return len(ids)


async def list_unknown(conn: AsyncConnection, *, limit: int = 500) -> list[dict[str, Any]]:
    """Rows whose outcome is unknown, locked for this transaction (other nodes skip them)."""
    result = await conn.execute(
        sa.select(
            outbox.c.message_id,
            outbox.c.tenant_id,
            outbox.c.claimed_at,
            outbox.c.next_attempt_at,
            outbox.c.route_provider,
            outbox.c.route_reason,
            outbox.c.attempts,
        )
        .where(outbox.c.state == "unknown")
        .order_by(outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = [dict(r._mapping) for r in result]
    if not rows:
        return rows
    info = await conn.execute(
        sa.select(messages.c.id, messages.c.provider, messages.c.conversation_id, conversations.c.wa_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(messages.c.id.in_([r["message_id"] for r in rows]))
    )
    by_id = {r.id: r for r in info}
    for r in rows:
        extra = by_id.get(r["message_id"])
        r["wa_id"] = extra.wa_id if extra else None
        r["conversation_id"] = extra.conversation_id if extra else None
    return rows


async def find_cloud_confirmation(
    conn: AsyncConnection, tenant_id: str, message_id: str, since: dt.datetime
) -> dict[str, Any] | None:
    """A Cloud API status fact that names our message id in ``biz_opaque_callback_data`` (stored by the
    webhook without a message, since we never learnt the wamid)."""
    ms = message_statuses.c
    result = await conn.execute(
        sa.select(message_statuses)
        .where(
            ms.tenant_id == tenant_id,
            ms.provider == "business_api",
            ms.message_id.is_(None),
            ms.created_at >= since,
            ms.raw.like(f"%{message_id}%"),
        )
        .order_by(ms.id)
        .limit(10)
    )
    for row in result:
        try:
            raw = json.loads(row.raw or "{}")
        except ValueError:
            continue
        if isinstance(raw, dict) and raw.get("biz_opaque_callback_data") == message_id:
            return dict(row._mapping)
    return None


async def find_web_confirmation(
    conn: AsyncConnection, tenant_id: str, wa_id: str, since: dt.datetime, until: dt.datetime
) -> dict[str, Any] | None:
    """An ack from the Web session for a message to ``wa_id`` that no message of ours claims, seen
    between the claim and the lease's end: the bridge sent it but we never recorded its id."""
    ms = message_statuses.c
    taken = (
        sa.select(messages.c.provider_message_id)
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.provider == "web",
            messages.c.provider_message_id == ms.provider_message_id,
        )
        .exists()
    )
    result = await conn.execute(
        sa.select(message_statuses)
        .where(
            ms.tenant_id == tenant_id,
            ms.provider == "web",
            ms.message_id.is_(None),
            ms.recipient_id == wa_id,
            ms.created_at >= since,
            ms.created_at <= until,
            ~taken,
        )
        .order_by(ms.id)
        .limit(1)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def requeue_unknown(conn: AsyncConnection, tenant_id: str, message_id: str, reason: str) -> None:
    now = utcnow()
    await conn.execute(
        outbox.update()
        .where(
            outbox.c.tenant_id == tenant_id, outbox.c.message_id == message_id, outbox.c.state == "unknown"
        )
        .values(state="queued", next_attempt_at=now, claimed_by=None, last_error=reason, updated_at=now)
    )
    await conn.execute(
        messages.update()
        .where(messages.c.tenant_id == tenant_id, messages.c.id == message_id, messages.c.status == "sending")
        .values(status="queued", updated_at=now)
    )
    await conn.execute(
        message_transitions.insert().values(
            **_transition(tenant_id, message_id, "sending", "queued", at=now, reason=reason)
        )
    )


# ------------------------------------------------------------------------------------------ settings


async def get_settings(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(messaging_settings).where(messaging_settings.c.tenant_id == tenant_id)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def save_settings(conn: AsyncConnection, tenant_id: str, values: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    if await get_settings(conn, tenant_id) is None:
        await conn.execute(
            messaging_settings.insert().values(
                tenant_id=tenant_id,
                created_at=now,
                updated_at=now,
                **{"fallback_template_body_param": False, **values},
            )
        )
    else:
        await conn.execute(
            messaging_settings.update()
            .where(messaging_settings.c.tenant_id == tenant_id)
            .values(**values, updated_at=now)
        )
    return await get_settings(conn, tenant_id)  # type: ignore[return-value]


async def latest_inbound(
    conn: AsyncConnection, tenant_id: str, conversation_id: int
) -> dict[str, Any] | None:
    """The conversation's newest inbound message (mark-as-read names it on the Cloud API)."""
    result = await conn.execute(
        sa.select(messages)
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.conversation_id == conversation_id,
            messages.c.direction == "inbound",
        )
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(1)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def messages_by_ids(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    result = await conn.execute(
        sa.select(messages).where(messages.c.tenant_id == tenant_id, messages.c.id.in_(list(ids)))
    )
    return {r.id: dict(r._mapping) for r in result}


async def pending_counts(conn: AsyncConnection, tenant_id: str | None = None) -> dict[str, int]:
    stmt = sa.select(outbox.c.state, sa.func.count()).where(outbox.c.state != "done").group_by(outbox.c.state)
    if tenant_id is not None:
        stmt = stmt.where(outbox.c.tenant_id == tenant_id)
    return {state: n for state, n in await conn.execute(stmt)}
