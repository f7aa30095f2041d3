"""The dispatcher's side of the outbox: which tenants have due rows, when the next one is due,
claiming a batch (the lease)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import sql
from control_plane.db.engine import utcnow
from control_plane.db.messages import conversations, messages
from control_plane.db.outbox_schema import clip, message_transitions, outbox, transition_row
from control_plane.db.sessions import session_state
from control_plane.db.tenants import tenants
from control_plane.statuses import MessageStatus, OutboxState


async def due_tenants(conn: AsyncConnection, now: dt.datetime, *, limit: int = 1000) -> list[str]:
    """Tenants with queued rows whose time has come (any node may serve them).

    One index probe per tenant (``EXISTS`` on the tenant/state/time index), not a scan of every
    due row: with a backlog of 48,000 queued messages the DISTINCT over the due rows cost MariaDB
    ~100 ms per poll."""
    due = (
        sa.select(sa.literal(1))
        .where(
            outbox.c.tenant_id == tenants.c.id,
            outbox.c.state == OutboxState.QUEUED,
            outbox.c.next_attempt_at <= now,
        )
        .exists()
    )
    result = await conn.execute(sa.select(tenants.c.id).where(due).limit(limit))
    return [r[0] for r in result]


async def next_due_at(conn: AsyncConnection, tenant_id: str) -> dt.datetime | None:
    result = await conn.execute(
        sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
            outbox.c.tenant_id == tenant_id, outbox.c.state == OutboxState.QUEUED
        )
    )
    return result.scalar()


async def bring_forward(conn: AsyncConnection, tenant_id: str, now: dt.datetime | None = None) -> int:
    """A road came back (the session is ready): waiting rows are due now."""
    now = now or utcnow()
    result = await conn.execute(
        outbox.update()
        .where(
            outbox.c.tenant_id == tenant_id,
            outbox.c.state == OutboxState.QUEUED,
            outbox.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now, updated_at=now)
    )
    return result.rowcount


async def claim(
    conn: AsyncConnection, tenant_id: str, node_id: str, *, limit: int, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due rows of one tenant for this node (MariaDB: ``FOR UPDATE SKIP LOCKED``,
    so nodes never claim the same row). Marks them ``sending`` (outbox and message) and returns them
    oldest first, each with its message's type/content (``created_at``, the outbox row's, is the
    message's), its conversation's wa_id/contact_name/last_inbound_at and the Web session's number
    (``own_number``).

    MariaDB: two round trips of written-out statements (pick and lock; then read, log the
    transitions and mark, in one multi-statement trip); elsewhere SQLAlchemy Core.

    The pick orders by ``next_attempt_at`` alone, the order of the (tenant, state, time) index: it
    reads and locks just ``limit`` rows. Adding ``created_at`` made MariaDB read, lock and sort
    the tenant's whole due backlog on every claim (4,800 row locks for a backlog of 2,400). Rows
    enqueued together get distinct times (``enqueue_many`` spaces them 1 µs apart); the claimed
    batch itself is returned sorted by (next_attempt_at, created_at)."""
    now = now or utcnow()
    if sql.raw_mariadb(conn):
        rows = await _claim_raw(conn, tenant_id, node_id, limit, now)
    else:
        rows = await _claim_core(conn, tenant_id, node_id, limit, now)
    loads = json.loads
    for r in rows:
        r["attempts"] += 1
        r["content"] = loads(r["content"]) if r["content"] else None
    return rows


def _claim_reason(node_id: str, attempts: int) -> str:
    """The claim's transition reason (the fast path writes the same with CONCAT)."""
    return f"claimed by {clip(node_id, 200)} (attempt {attempts + 1})"


def _batch_order(row: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return row["next_attempt_at"], row["created_at"]


# The rows a claim returns: the outbox row's, its message's and its conversation's columns.
_CLAIMED = (
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
    conversations.c.contact_name,
    session_state.c.own_number,
)
_CLAIM_COLUMNS = tuple(c.name for c in _CLAIMED)


async def _claim_core(
    conn: AsyncConnection, tenant_id: str, node_id: str, limit: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """SQLAlchemy Core: pick and lock, read, mark and log (the rows as the claim found them)."""
    picked = await conn.execute(
        sa.select(outbox.c.message_id)
        .where(
            outbox.c.tenant_id == tenant_id,
            outbox.c.state == OutboxState.QUEUED,
            outbox.c.next_attempt_at <= now,
        )
        .order_by(outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in picked]
    if not ids:
        return []
    result = await conn.execute(
        sa.select(*_CLAIMED)
        .join(messages, messages.c.id == outbox.c.message_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .outerjoin(session_state, session_state.c.tenant_id == outbox.c.tenant_id)
        .where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(ids))
    )
    rows = sorted((dict(r._mapping) for r in result), key=_batch_order)
    await conn.execute(
        outbox.update()
        .where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(ids))
        .values(
            state=OutboxState.SENDING,
            claimed_by=node_id,
            claimed_at=now,
            attempts=outbox.c.attempts + 1,
            updated_at=now,
        )
    )
    await conn.execute(
        messages.update()
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.id.in_(ids),
            messages.c.status == MessageStatus.QUEUED,
        )
        .values(status=MessageStatus.SENDING, updated_at=now)
    )
    transitions = [
        transition_row(
            tenant_id,
            r["message_id"],
            r["status"],
            MessageStatus.SENDING,
            at=now,
            reason=_claim_reason(node_id, r["attempts"]),
        )
        for r in rows
    ]
    await conn.execute(message_transitions.insert(), transitions)
    return rows


async def _claim_raw(
    conn: AsyncConnection, tenant_id: str, node_id: str, limit: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """MariaDB: the same statements written out, in two round trips."""
    t, at = sql.literal_str(tenant_id), sql.literal_dt(now)
    ((picked, _),) = await sql.round_trip(
        conn,
        [
            f"SELECT message_id FROM outbox WHERE tenant_id = {t} AND state = 'queued' "
            f"AND next_attempt_at <= {at} ORDER BY next_attempt_at LIMIT {int(limit)} FOR UPDATE SKIP LOCKED"
        ],
        what="outbox claim",
    )
    if not picked:
        return []
    ids = ",".join([sql.literal_str(r[0]) for r in picked])
    joined = (
        f"FROM outbox o JOIN messages m ON m.id = o.message_id "
        f"WHERE o.tenant_id = {t} AND o.message_id IN ({ids})"
    )
    # In this order: the transitions read each row as the claim finds it (its status, its attempt).
    (found, _), *_ = await sql.round_trip(
        conn,
        [
            "SELECT o.message_id, o.attempts, o.requested_provider, o.created_at, o.next_attempt_at, m.type, "
            "m.content, m.conversation_id, m.status, c.wa_id, c.last_inbound_at, c.provider_last, "
            "c.contact_name, s.own_number "
            + joined.replace(
                " WHERE",
                " JOIN conversations c ON c.id = m.conversation_id "
                "LEFT JOIN session_state s ON s.tenant_id = o.tenant_id WHERE",
                1,
            ),
            "INSERT INTO message_transitions (tenant_id, message_id, from_status, to_status, reason, at) "
            f"SELECT m.tenant_id, m.id, m.status, 'sending', "
            f"CONCAT({sql.literal_str('claimed by ' + clip(node_id, 200))}, "
            f"' (attempt ', o.attempts + 1, ')'), {at} {joined} ORDER BY o.next_attempt_at, o.created_at",
            f"UPDATE outbox SET state = 'sending', claimed_by = {sql.literal(node_id)}, claimed_at = {at}, "
            f"attempts = attempts + 1, updated_at = {at} WHERE tenant_id = {t} AND message_id IN ({ids})",
            f"UPDATE messages SET status = 'sending', updated_at = {at} "
            f"WHERE tenant_id = {t} AND id IN ({ids}) AND status = 'queued'",
        ],
        what="outbox claim",
    )
    rows = [dict(zip(_CLAIM_COLUMNS, values, strict=True)) for values in found]
    rows.sort(key=_batch_order)
    return rows
