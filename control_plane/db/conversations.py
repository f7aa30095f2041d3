"""Conversations: one per (tenant, contact wa_id), whichever provider carried its messages.

``canonical_wa_id`` is the contact key (digits only). ``upsert_conversations`` is the multi-row
upsert the inbound writers use (counts add up, times only move forward); its written-out MariaDB twin
is in ``db/inbound_sql.py``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import utcnow
from control_plane.db.metadata import TenantId, Timestamp, metadata

# BIGINT on MariaDB; INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

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
    # 'group' (a WhatsApp Web group: wa_id ``<id>@g.us``) or 'individual' (migration 0010).
    sa.Column("kind", sa.String(16), nullable=False, server_default="individual"),
    sa.UniqueConstraint("tenant_id", "wa_id"),
    sa.Index("ix_conversations_tenant_id_last_message_at", "tenant_id", "last_message_at"),
)


_NON_DIGITS = re.compile(r"\D")
# WhatsApp Web ids that are no phone number: a group (``120363...@g.us``, older ones
# ``<creator digits>-<seconds>@g.us``) and a contact WhatsApp Web knows only by its @lid.
_KEPT_ID = re.compile(r"([0-9][0-9-]{0,25})@(g\.us|lid)")
_PHONE_SERVERS = ("c.us", "s.whatsapp.net")


def canonical_wa_id(number: str) -> str:
    """Digits only: ``+1 (650) 555-1234`` -> ``16505551234``. One conversation per canonical id.

    WhatsApp Web ids: ``15551234567@c.us`` -> ``15551234567``; a group ``120363...@g.us`` and an
    unresolved ``<n>@lid`` contact are kept whole (their digits are no phone number); any other
    (``status@broadcast``, newsletters) -> ``""``: no conversation."""
    if number and "@" in number:
        kept = _KEPT_ID.fullmatch(number.strip().lower())
        if kept is not None:
            return kept.group(0)
        user, _, server = number.partition("@")
        if server.strip().lower() not in _PHONE_SERVERS:
            return ""
        number = user
    return _NON_DIGITS.sub("", number or "")


def conversation_kind(wa_id: str) -> str:
    """``group`` for a WhatsApp Web group's wa_id (``...@g.us``), else ``individual``."""
    return "group" if wa_id.endswith("@g.us") else "individual"


def clip(value: Any, length: int) -> Any:
    """``value`` cut to ``length`` characters when it is a longer string."""
    if isinstance(value, str) and len(value) > length:
        return value[:length]
    return value


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT (for ON DUPLICATE KEY / ON CONFLICT)."""
    if conn.dialect.name == "sqlite":
        return sqlite_dialect.insert(table)
    return mysql_dialect.insert(table)


def insert_ignore(conn: AsyncConnection, table: sa.Table) -> sa.Insert:
    """INSERT that skips rows hitting a unique key (a concurrent writer on another node)."""
    if conn.dialect.name == "sqlite":
        return table.insert().prefix_with("OR IGNORE")
    return table.insert().prefix_with("IGNORE")


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
    stmt = dialect_insert(conn, conversations).values(
        tenant_id=tenant_id,
        wa_id=wa_id,
        kind=conversation_kind(wa_id),
        contact_name=clip(contact_name, 256),
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
        changes["contact_name"] = clip(contact_name, 256)
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


async def upsert_conversations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Multi-row upsert: counts add up, times only move forward, names are kept when absent."""
    stmt: Any
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
