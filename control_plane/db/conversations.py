"""Conversations: one per (tenant, contact), whichever provider carried its messages.

A contact is known by its phone number, by its business-scoped user id (BSUID: Meta's id for a
WhatsApp user who may hide the number behind a username, ``US.13491208655302741918``), or both.
``wa_id`` is the conversation's address: the phone number's digits when known, else the BSUID
(``canonical_wa_id`` gives either); ``bsuid`` and ``username`` are what Meta last told us.
``db/contacts.py`` resolves a BSUID to its conversation and merges a BSUID-only conversation into
the phone number's when Meta tells us both. ``upsert_conversations`` is the multi-row upsert the
inbound writers use (counts add up, times only move forward, a known BSUID or username is kept when
absent); its written-out MariaDB twin is in ``db/inbound_sql.py``.
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
# A contact id: phone digits (<= 15), a BSUID (two letters, a dot, "ENT." for a parent BSUID, up to
# 128 letters and digits: at most 135 characters) or a Web chat id. Stored whole, never cut (migration
# 0011): a longer one is refused where it arrives (its message skipped and counted).
CONTACT_ID_LEN = 512
USERNAME_LEN = 256

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("wa_id", sa.String(CONTACT_ID_LEN), nullable=False),
    sa.Column("contact_name", sa.String(256), nullable=True),
    sa.Column("provider_last", sa.String(20), nullable=True),
    sa.Column("last_inbound_at", Timestamp, nullable=True),
    sa.Column("last_message_at", Timestamp, nullable=True),
    sa.Column("last_message_id", sa.String(32), nullable=True),
    sa.Column("unread_count", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # 'group' (a WhatsApp Web group: wa_id ``<id>@g.us``) or 'individual' (migration 0008).
    sa.Column("kind", sa.String(16), nullable=False, server_default="individual"),
    sa.Column("bsuid", sa.String(CONTACT_ID_LEN), nullable=True),
    sa.Column("username", sa.String(USERNAME_LEN), nullable=True),
    sa.UniqueConstraint("tenant_id", "wa_id"),
    sa.Index("ix_conversations_tenant_id_last_message_at", "tenant_id", "last_message_at"),
    # Not unique: two nodes may each start one for a new contact; db/contacts.py merges them.
    sa.Index("ix_conversations_tenant_id_bsuid", "tenant_id", "bsuid"),
)


_NON_DIGITS = re.compile(r"\D")
# WhatsApp Web ids that are no phone number: a group (``120363...@g.us``, older ones
# ``<creator digits>-<seconds>@g.us``) and a contact WhatsApp Web knows only by its @lid.
_KEPT_ID = re.compile(r"([0-9][0-9-]{0,25})@(g\.us|lid)")
_PHONE_SERVERS = ("c.us", "s.whatsapp.net")


# Meta's format: an ISO country code, a dot, up to 128 letters and digits; a parent BSUID (shared by
# a business's portfolios) has "ENT." after the country code: US.ENT.11815799212886844830.
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}\Z")


def is_bsuid(value: object) -> bool:
    """A business-scoped user id (``US.13491208655302741918``), as opposed to a phone number."""
    return isinstance(value, str) and len(value) > 3 and value[2] == "." and _BSUID.match(value) is not None


def canonical_wa_id(number: str) -> str:
    """Digits only: ``+1 (650) 555-1234`` -> ``16505551234``; a BSUID as it is. One conversation per
    canonical id.

    WhatsApp Web ids: ``15551234567@c.us`` -> ``15551234567``; a group ``120363...@g.us`` and an
    unresolved ``<n>@lid`` contact are kept whole (their digits are no phone number); any other
    (``status@broadcast``, newsletters) -> ``""``: no conversation."""
    if is_bsuid(number):
        return number
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
    """``value`` cut to ``length`` characters, an ellipsis marking the cut, when it is a longer string.
    Only for text (names, reasons, details): never an id (ids are stored whole or refused)."""
    if isinstance(value, str) and len(value) > length:
        return value[: length - 1] + "…"
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
    """The tenant's conversation with this contact (created when missing; safe under concurrency).
    A BSUID finds the conversation that knows it (its phone number's, when Meta told us both)."""
    wa_id = canonical_wa_id(wa_id)
    if not wa_id:
        raise ValueError("wa_id must contain digits")
    if is_bsuid(wa_id):
        known = await conversation_by_bsuid(conn, tenant_id, wa_id)
        if known is not None:
            wa_id = known["wa_id"]
    now = utcnow()
    stmt = dialect_insert(conn, conversations).values(
        tenant_id=tenant_id,
        wa_id=wa_id,
        kind=conversation_kind(wa_id),
        bsuid=wa_id if is_bsuid(wa_id) else None,
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


async def conversation_by_bsuid(conn: AsyncConnection, tenant_id: str, bsuid: str) -> dict[str, Any] | None:
    """The conversation that knows this BSUID: the phone number's when there is one, else the
    BSUID-only one (``wa_id`` = the BSUID)."""
    c = conversations.c
    result = await conn.execute(
        sa.select(conversations)
        .where(c.tenant_id == tenant_id, sa.or_(c.bsuid == bsuid, c.wa_id == bsuid))
        .order_by(sa.case((c.wa_id == bsuid, 1), else_=0), c.id)
        .limit(1)
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
    """Multi-row upsert: counts add up, times only move forward, names (and a BSUID, a username) are
    kept when absent."""
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
                "bsuid": sa.func.coalesce(ex.bsuid, c.bsuid),
                "username": sa.func.coalesce(ex.username, c.username),
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
                ("bsuid", sa.func.coalesce(ins.bsuid, c.bsuid)),
                ("username", sa.func.coalesce(ins.username, c.username)),
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
