"""Crash recovery: leases of a node that stopped answering expire into ``unknown``; an unknown row is
resolved by a confirmation the provider sent anyway (a Cloud API status naming our id, a Web ack no
message claims), or queued again; status facts stored before their message knew its provider id."""

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
    await conn.execute(
        outbox.update()
        .where(outbox.c.message_id.in_(ids))
        .values(
            state=OutboxState.UNKNOWN,
            next_attempt_at=decide_at,
            claimed_by=None,
            updated_at=utcnow(),
            last_error="lease expired: the node sending it stopped before recording the answer",
        )
    )
    return len(ids)


async def list_unknown(conn: AsyncConnection, *, limit: int = 500) -> list[dict[str, Any]]:
    """Rows whose outcome is unknown, locked for this transaction (other nodes skip them), with their
    conversation's ``wa_id`` and their message as a claim returns it (``message``: type, content,
    created_at, contact_name, own_number)."""
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
        .where(outbox.c.state == OutboxState.UNKNOWN)
        .order_by(outbox.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = [dict(r._mapping) for r in result]
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
            outbox.c.tenant_id == tenant_id,
            outbox.c.message_id == message_id,
            outbox.c.state == OutboxState.UNKNOWN,
        )
        .values(
            state=OutboxState.QUEUED, next_attempt_at=now, claimed_by=None, last_error=reason, updated_at=now
        )
    )
    await conn.execute(
        messages.update()
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.id == message_id,
            messages.c.status == MessageStatus.SENDING,
        )
        .values(status=MessageStatus.QUEUED, updated_at=now)
    )
    await conn.execute(
        message_transitions.insert().values(
            **transition_row(
                tenant_id, message_id, MessageStatus.SENDING, MessageStatus.QUEUED, at=now, reason=reason
            )
        )
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
