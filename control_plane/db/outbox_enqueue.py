"""Putting messages in the outbox: one with its idempotency key (the API), many at once (campaigns,
benchmarks)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import messages as messages_db
from control_plane.db.engine import utcnow
from control_plane.db.messages import canonical_wa_id, conversations, dump_json, messages, new_message_id
from control_plane.db.outbox_schema import message_transitions, outbox, transition_row
from control_plane.statuses import MessageStatus, OutboxState


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
            state=OutboxState.QUEUED,
            attempts=0,
            next_attempt_at=now,
            created_at=row["created_at"],  # its message's: a claim reads it as the message's
            updated_at=now,
        )
    )
    await conn.execute(
        message_transitions.insert().values(
            **transition_row(
                tenant_id,
                row["id"],
                None,
                MessageStatus.QUEUED,
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
    conv_ids = await _conversation_ids(conn, tenant_id, {canonical_wa_id(i["wa_id"]) for i in items}, now)
    ids, msg_rows, box_rows, tr_rows = [], [], [], []
    for i, item in enumerate(items):
        mid = new_message_id()
        ids.append(mid)
        at = now + dt.timedelta(microseconds=i)  # keeps creation order stable
        msg_rows.append(_queued_message(tenant_id, mid, conv_ids[canonical_wa_id(item["wa_id"])], item, at))
        box_rows.append(_queued_outbox_row(tenant_id, mid, item.get("requested_provider", "auto"), at))
        tr_rows.append(transition_row(tenant_id, mid, None, MessageStatus.QUEUED, at=at, reason="accepted"))
    await conn.execute(messages.insert(), msg_rows)
    await conn.execute(outbox.insert(), box_rows)
    await conn.execute(message_transitions.insert(), tr_rows)
    return ids


async def _conversation_ids(
    conn: AsyncConnection, tenant_id: str, wa_ids: set[str], now: dt.datetime
) -> dict[str, int]:
    """Each contact's conversation id, the conversations created where missing (one upsert)."""
    ordered = sorted(wa_ids)
    rows = [
        {
            "tenant_id": tenant_id,
            "wa_id": w,
            "unread_count": 0,
            "created_at": now,
            "updated_at": now,
            "last_message_at": now,
        }
        for w in ordered
    ]
    stmt: sa.Executable
    if conn.dialect.name == "sqlite":
        stmt = sqlite_dialect.insert(conversations).on_conflict_do_nothing(
            index_elements=["tenant_id", "wa_id"]
        )
    else:
        stmt = mysql_dialect.insert(conversations).prefix_with("IGNORE")
    await conn.execute(stmt, rows)
    result = await conn.execute(
        sa.select(conversations.c.id, conversations.c.wa_id).where(
            conversations.c.tenant_id == tenant_id, conversations.c.wa_id.in_(ordered)
        )
    )
    return {w: cid for cid, w in result}


def _queued_message(
    tenant_id: str, message_id: str, conversation_id: int, item: dict[str, Any], at: dt.datetime
) -> dict[str, Any]:
    return {
        "id": message_id,
        "tenant_id": tenant_id,
        "conversation_id": conversation_id,
        "direction": "outbound",
        "provider": None,
        "provider_message_id": None,
        "type": item["type"],
        "content": dump_json(item["content"]),
        "status": MessageStatus.QUEUED,
        "created_at": at,
        "updated_at": at,
    }


def _queued_outbox_row(
    tenant_id: str, message_id: str, requested_provider: str, at: dt.datetime
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "tenant_id": tenant_id,
        "idempotency_key": None,
        "request_hash": None,
        "requested_provider": requested_provider,
        "state": OutboxState.QUEUED,
        "attempts": 0,
        "next_attempt_at": at,
        "created_at": at,
        "updated_at": at,
    }
