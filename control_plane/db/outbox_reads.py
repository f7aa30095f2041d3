"""Reads for the API and the dispatcher: an outbox row and its transitions, messages by id, a
conversation's newest inbound message, the backlog by state; and the per-tenant messaging settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import utcnow
from control_plane.db.messages import messages
from control_plane.db.outbox_schema import message_transitions, messaging_settings, outbox
from control_plane.statuses import OutboxState


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


async def pending_counts(conn: AsyncConnection, tenant_id: str | None = None) -> dict[str, int]:
    stmt = (
        sa.select(outbox.c.state, sa.func.count())
        .where(outbox.c.state != OutboxState.DONE)
        .group_by(outbox.c.state)
    )
    if tenant_id is not None:
        stmt = stmt.where(outbox.c.tenant_id == tenant_id)
    return {state: n for state, n in await conn.execute(stmt)}


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
    saved = await get_settings(conn, tenant_id)
    assert saved is not None  # written just above, in this transaction
    return saved


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


async def route_reasons(conn: AsyncConnection, tenant_id: str, ids: Sequence[str]) -> dict[str, str | None]:
    """Each message's route reason (which road carried it and why), for the messages with an outbox
    row among ``ids`` (the CRM's sends)."""
    if not ids:
        return {}
    result = await conn.execute(
        sa.select(outbox.c.message_id, outbox.c.route_reason).where(
            outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(list(ids))
        )
    )
    return {message_id: reason for message_id, reason in result}
