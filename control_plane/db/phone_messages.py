"""Messages typed on the Web session's phone (or in the WhatsApp Business app: Cloud API echoes),
stored as outbound ``sent`` rows of the contact's conversation, in the order given, once per
(tenant, provider message id). Their ``created_at`` comes from the same tenant clock as inbound
messages (``db.inbound.clock``), so the history interleaves both in arrival order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import clip, conversations, get_or_create_conversation, insert_ignore
from control_plane.db.engine import utcnow
from control_plane.db.inbound import clock
from control_plane.db.messages import dump_json, messages, new_message_id
from control_plane.db.status_facts import apply_recorded_statuses
from control_plane.statuses import MessageStatus


async def record_phone_messages(
    conn: AsyncConnection, tenant_id: str, provider: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Store messages typed on the phone as outbound rows (``sent``), once per (tenant, provider
    message id), in the given order; returns the rows stored now (content decoded, ``wa_id``,
    ``contact_name`` and ``from`` added). Acks that were stored before their message (``message_id`` NULL)
    are applied."""
    m = messages.c
    fresh: dict[str, dict[str, Any]] = {}
    for item in items:
        fresh.setdefault(item["provider_message_id"], item)
    if not fresh:
        return []
    known = await conn.execute(
        sa.select(m.provider_message_id).where(
            m.tenant_id == tenant_id, m.provider == provider, m.provider_message_id.in_(list(fresh))
        )
    )
    for (pmid,) in known:
        fresh.pop(pmid, None)  # a send of ours, or the same message reported again
    if not fresh:
        return []
    now = utcnow()
    stored = []
    for (pmid, item), created in zip(fresh.items(), clock.stamps(tenant_id, len(fresh), now), strict=True):
        row = await _record_phone_message(conn, tenant_id, provider, pmid, item, created, now)
        if row is not None:
            stored.append(row)
    return stored


async def _record_phone_message(
    conn: AsyncConnection,
    tenant_id: str,
    provider: str,
    pmid: str,
    item: dict[str, Any],
    created: dt.datetime,
    now: dt.datetime,
) -> dict[str, Any] | None:
    conv = await get_or_create_conversation(conn, tenant_id, item["wa_id"], provider=provider)
    at = item["provider_timestamp"] or now
    row = {
        "id": new_message_id(),
        "tenant_id": tenant_id,
        "conversation_id": conv["id"],
        "direction": "outbound",
        "provider": provider,
        "provider_message_id": pmid,
        "type": clip(str(item["type"]), 32),
        "content": dump_json(item["content"]),
        "status": MessageStatus.SENT.value,
        "created_at": created,
        "updated_at": now,
        "sent_at": at,
        "provider_timestamp": at,
        "origin": item.get("origin") or "phone",  # "business_app": a Cloud API echo
        "author": item.get("author"),  # a wa_id, whole (web_ingest refuses longer)
    }
    if (await conn.execute(insert_ignore(conn, messages).values(**row))).rowcount == 0:
        return None  # stored meanwhile by another writer
    c = conversations.c
    newer = sa.or_(c.last_message_at.is_(None), c.last_message_at <= at)
    await conn.execute(
        conversations.update()
        .where(c.tenant_id == tenant_id, c.id == conv["id"], newer)
        .values(last_message_at=at, last_message_id=row["id"], updated_at=now)
    )
    after = await apply_recorded_statuses(conn, tenant_id, row["id"])
    if after is not None:
        row.update(status=after["status"], updated_at=after["updated_at"])
    row["content"] = item["content"]
    row["wa_id"] = conv["wa_id"]
    row["contact_name"] = conv.get("contact_name")
    row["from"] = item.get("from")
    return row
