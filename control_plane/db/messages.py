"""Messages (one row per message, whichever provider carried it, in its contact's conversation) and
the status ladder applied to them.

Status ladder (a message never moves backwards; ``control_plane/statuses.py``):
    queued -> sending -> sent -> failed -> delivered -> read -> played
``failed`` outranks ``sent`` (Meta reports failures after accepting) but not ``delivered``/``read``;
a failure is always recorded (error_code, error_message, failed_at) even when it cannot move the status.
Inbound messages are ``received``.

Neighbours: ``db/conversations.py`` (conversations, contact ids), ``db/inbound.py`` (inbound and
phone-typed messages, in delivery order), ``db/status_facts.py`` (provider statuses),
``db/templates.py`` (Business API templates). Their public names are importable from here too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.compact_json import dict_encoder
from control_plane.db.conversations import (  # noqa: F401  (importable from here)
    CONTACT_ID_LEN,
    BigId,
    adopt_canonical_wa_id,
    canonical_wa_id,
    clip,
    conversations,
    get_conversation,
    get_conversation_by_wa_id,
    get_or_create_conversation,
    list_conversations,
    mark_conversation_read,
)
from control_plane.db.engine import utcnow
from control_plane.db.metadata import ERROR_CODE_LEN, LongText, TenantId, Timestamp, error_columns, metadata
from control_plane.statuses import STATUS_RANK, STATUS_TIME_COLUMN, MessageStatus, status_rank

DIRECTIONS = ("inbound", "outbound")
PROVIDERS = ("web", "business_api")
STATUSES = tuple(MessageStatus)
# A provider's message id (a wamid, a Web message id): stored whole, never cut (migration 0011).
PROVIDER_ID_LEN = 512

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
    *error_columns(),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("sent_at", Timestamp, nullable=True),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.Column("read_at", Timestamp, nullable=True),
    sa.Column("failed_at", Timestamp, nullable=True),
    sa.Column("provider_timestamp", Timestamp, nullable=True),
    # Who wrote an outbound message when not us: "phone" (typed on the Web session's phone),
    # "business_app" (the WhatsApp Business app, Cloud API coexistence); NULL otherwise (0007).
    sa.Column("origin", sa.String(20), nullable=True),
    sa.Column(
        "author", sa.String(CONTACT_ID_LEN), nullable=True
    ),  # a group message's member (migration 0008)
    # Changes to the message (db/message_changes.py): last edit, revoke, current reactions (JSON).
    sa.Column("edited_at", Timestamp, nullable=True),
    sa.Column("deleted_at", Timestamp, nullable=True),
    sa.Column("reactions", LongText, nullable=True),
    # The sender's BSUID (inbound Cloud API messages), and the provider's message object verbatim.
    sa.Column("provider_user_id", sa.String(CONTACT_ID_LEN), nullable=True),
    sa.Column("raw", LongText, nullable=True),
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
    sa.Column("recipient_id", sa.String(CONTACT_ID_LEN), nullable=True),  # phone digits or a BSUID
    *error_columns(),
    sa.Column("raw", LongText, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "provider_message_id", "status"),
    sa.Index("ix_message_statuses_tenant_id_message_id", "tenant_id", "message_id"),
)


# --------------------------------------------------------------------------------------------- helpers


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


def message_out(row: dict[str, Any]) -> dict[str, Any]:
    """A message row with its content decoded (what API and events show)."""
    out = dict(row)
    out["content"] = load_json(out.get("content"))
    return out


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
    fact = {"status": status, "occurred_at": at, "error_code": error_code, "error_message": error_message}
    await move_up(conn, tenant_id, row, [fact], columns=columns)
    return row


async def move_up(
    conn: AsyncConnection,
    tenant_id: str,
    row: dict[str, Any],
    facts: Sequence[dict[str, Any]],
    *,
    columns: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Apply status ``facts`` (lowest rank first) to a message ``row`` up the ladder, plus ``columns``
    whatever the status; ``row`` is updated in place. Returns the changes made (empty: none)."""
    changes = dict(columns or {})
    changes.update(status_changes(row, facts))
    if changes:
        changes["updated_at"] = now or utcnow()
        await conn.execute(guarded_update(tenant_id, row["id"], changes))
        row.update(changes)
    return changes


_RANK_SQL = sa.case(STATUS_RANK, value=messages.c.status, else_=-1)


def guarded_update(tenant_id: str, message_id: str, changes: dict[str, Any]) -> sa.Update:
    """The UPDATE for ``status_changes``, with the ladder enforced by the database as well: the status
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


def status_changes(row: dict[str, Any], updates: Sequence[dict[str, Any]]) -> dict[str, Any]:
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
                values["error_code"] = clip(str(upd["error_code"]), ERROR_CODE_LEN)
            if upd.get("error_message") is not None:
                values["error_message"] = upd["error_message"]
    if values.get("status") == current:
        values.pop("status")
    return values


async def list_status_events(conn: AsyncConnection, tenant_id: str, message_id: str) -> list[dict[str, Any]]:
    """The provider's status facts for one message, in arrival order (the history the API shows)."""
    result = await conn.execute(
        sa.select(message_statuses)
        .where(message_statuses.c.tenant_id == tenant_id, message_statuses.c.message_id == message_id)
        .order_by(message_statuses.c.id)
    )
    return [dict(r._mapping) for r in result]
