"""Crash recovery: leases of a node that stopped answering expire into ``unknown``; the claims of a
dead process on this node are taken over at once (``claims_of``, then sent, queued again or
unknown by its send journal); an unknown row is resolved by a confirmation the provider sent anyway
(a Cloud API status naming our id, a Web ack no message claims), or queued again after the reconcile
delay, which is measured from how long the tenant's status facts take (``status_delays``); status
facts stored before their message knew its provider id."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import utcnow
from control_plane.db.messages import conversations, message_statuses, messages
from control_plane.db.outbox_schema import message_transitions, outbox, transition_row
from control_plane.db.sessions import session_state
from control_plane.statuses import MessageStatus, OutboxState


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
        .where(
            outbox.c.state == OutboxState.SENDING,
            outbox.c.next_attempt_at < cutoff,
            outbox.c.claimed_at < cutoff,
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in picked]
    if not ids:
        return 0
    await to_unknown(
        conn,
        ids,
        decide_at,
        "lease expired: the node sending it stopped before recording the answer",
        keep_claim=True,  # its journal, should the node come back, still knows what became of it
    )
    return len(ids)


async def to_unknown(
    conn: AsyncConnection,
    message_ids: list[str],
    decide_at: dt.datetime,
    reason: str,
    *,
    provider: str | None = None,
    keep_claim: bool = False,
) -> None:
    """Claimed (``sending``) rows whose outcome nobody knows: ``unknown`` (since now, ``updated_at``)
    until a confirmation settles them or ``decide_at`` (the longest wait) comes."""
    values: dict[str, Any] = {
        "state": OutboxState.UNKNOWN,
        "next_attempt_at": decide_at,
        "updated_at": utcnow(),
        "last_error": reason,
    }
    if not keep_claim:
        values["claimed_by"] = None
    if provider is not None:
        values["route_provider"] = provider
    await conn.execute(
        outbox.update()
        .where(outbox.c.message_id.in_(message_ids), outbox.c.state == OutboxState.SENDING)
        .values(**values)
    )


async def release_claims(conn: AsyncConnection, message_ids: list[str]) -> None:
    """Forget who claimed these rows (their process's journal has been read)."""
    if message_ids:
        await conn.execute(
            outbox.update().where(outbox.c.message_id.in_(message_ids)).values(claimed_by=None)
        )


async def claims_of(conn: AsyncConnection, claimed_by: str, *, limit: int = 500) -> list[dict[str, Any]]:
    """Rows ``claimed_by`` claimed and never answered for (``sending``, or ``unknown`` once their lease
    expired), locked for this transaction, with their message's conversation and ``wa_id``."""
    o = outbox.c
    picked = await conn.execute(
        sa.select(o.message_id, o.tenant_id, o.state, o.attempts, o.claimed_at, o.route_reason)
        .where(o.state.in_([OutboxState.SENDING, OutboxState.UNKNOWN]), o.claimed_by == claimed_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = [dict(r._mapping) for r in picked]
    return await _with_recipients(conn, rows)


async def _with_recipients(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds each row's ``conversation_id``, ``wa_id`` (None when its message is gone) and its message
    as a claim returns it (``message``: type, content, created_at, contact_name, own_number)."""
    if not rows:
        return rows
    info = await conn.execute(
        sa.select(
            messages.c.id,
            messages.c.provider,
            messages.c.conversation_id,
            messages.c.type,
            messages.c.content,
            messages.c.created_at,
            conversations.c.wa_id,
            conversations.c.contact_name,
            sa.select(session_state.c.own_number)
            .where(session_state.c.tenant_id == messages.c.tenant_id)
            .scalar_subquery()
            .label("own_number"),
        )
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(messages.c.id.in_([r["message_id"] for r in rows]))
    )
    by_id = {r.id: dict(r._mapping) for r in info}
    for r in rows:
        extra = by_id.get(r["message_id"])
        r["wa_id"] = extra["wa_id"] if extra else None
        r["conversation_id"] = extra["conversation_id"] if extra else None
        if extra:
            extra["content"] = json.loads(extra["content"]) if extra["content"] else None
        r["message"] = extra
    return rows


async def list_unknown(conn: AsyncConnection, *, limit: int = 500) -> list[dict[str, Any]]:
    """Rows whose outcome is unknown, locked for this transaction (other nodes skip them); ``updated_at``
    is when they became unknown, ``next_attempt_at`` the end of the longest wait."""
    result = await conn.execute(
        sa.select(
            outbox.c.message_id,
            outbox.c.tenant_id,
            outbox.c.claimed_at,
            outbox.c.next_attempt_at,
            outbox.c.updated_at,
            outbox.c.route_provider,
            outbox.c.route_reason,
            outbox.c.attempts,
        )
        .where(outbox.c.state == OutboxState.UNKNOWN)
        .order_by(outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return await _with_recipients(conn, [dict(r._mapping) for r in result])


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
    await requeue(conn, tenant_id, [message_id], reason, state=OutboxState.UNKNOWN)


async def requeue(
    conn: AsyncConnection,
    tenant_id: str,
    message_ids: list[str],
    reason: str,
    *,
    state: OutboxState,
) -> None:
    """Rows in ``state`` (unknown, or sending when their process died before the send) queued again,
    due now; their messages back to ``queued``, with the reason in their history."""
    if not message_ids:
        return
    now = utcnow()
    await conn.execute(
        outbox.update()
        .where(
            outbox.c.tenant_id == tenant_id,
            outbox.c.message_id.in_(message_ids),
            outbox.c.state == state,
        )
        .values(
            state=OutboxState.QUEUED, next_attempt_at=now, claimed_by=None, last_error=reason, updated_at=now
        )
    )
    await conn.execute(
        messages.update()
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.id.in_(message_ids),
            messages.c.status == MessageStatus.SENDING,
        )
        .values(status=MessageStatus.QUEUED, updated_at=now)
    )
    await conn.execute(
        message_transitions.insert(),
        [
            transition_row(tenant_id, mid, MessageStatus.SENDING, MessageStatus.QUEUED, at=now, reason=reason)
            for mid in message_ids
        ],
    )


async def status_delays(
    conn: AsyncConnection, tenant_id: str, provider: str, *, before: dt.datetime, limit: int = 200
) -> list[float | None]:
    """For the tenant's last ``limit`` sends through ``provider`` done before ``before``: seconds from
    the provider's answer (``sent_at``) to the first status fact about it, None when none came.
    Index-bound: the outbox's (tenant, state, time) index picks the rows, the facts' unique
    (tenant, provider message id, status) index finds their first arrival."""
    recent = _recent_sends(tenant_id, limit, before=before)
    first = sa.func.min(message_statuses.c.created_at)
    result = await conn.execute(_with_fact_time(recent, provider, first))
    return [
        max(0.0, (arrived - sent_at).total_seconds()) if arrived is not None else None
        for sent_at, arrived in result
    ]


async def last_status_at(
    conn: AsyncConnection, tenant_id: str, provider: str, *, limit: int = 50
) -> dt.datetime | None:
    """When the latest status fact about one of the tenant's last ``limit`` sends arrived: statuses are
    coming in (webhooks are delivered) when it is recent."""
    recent = _recent_sends(tenant_id, limit)
    result = await conn.execute(_with_fact_time(recent, provider, sa.func.max(message_statuses.c.created_at)))
    arrivals = [arrived for _, arrived in result if arrived is not None]
    return max(arrivals) if arrivals else None


def _recent_sends(tenant_id: str, limit: int, *, before: dt.datetime | None = None) -> sa.Subquery:
    o = outbox.c
    where = [o.tenant_id == tenant_id, o.state == OutboxState.DONE]
    if before is not None:
        where.append(o.next_attempt_at < before)
    query = sa.select(o.message_id).where(*where).order_by(o.next_attempt_at.desc()).limit(limit)
    return query.subquery()


def _with_fact_time(recent: sa.Subquery, provider: str, aggregate: Any) -> sa.Select:
    """(sent_at, ``aggregate`` of the arrival times of its status facts) per sent message of ``recent``."""
    m, ms = messages.c, message_statuses.c
    facts = (
        sa.select(aggregate)
        .where(
            ms.tenant_id == m.tenant_id,
            ms.provider_message_id == m.provider_message_id,
            ms.provider == m.provider,
        )
        .scalar_subquery()
    )
    return (
        sa.select(m.sent_at, facts)
        .join(recent, recent.c.message_id == m.id)
        .where(m.provider == provider, m.sent_at.is_not(None), m.provider_message_id.is_not(None))
    )


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
