"""What Meta tells us besides messages: every change of another webhook field kept raw (so nothing is
lost and a later version can re-read it), and the contact preferences some of them set.

``provider_events``: one row per (tenant, dedup key). The key is the change itself (its field, entry
and value; ``webhooks/fields.py``), so a redelivery finds its row and changes nothing.
``contact_preferences``: a contact's latest preference per category (``marketing_messages``:
``stop`` / ``resume``); an older notice never overwrites a newer one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import CONTACT_ID_LEN, BigId, clip, insert_ignore
from control_plane.db.engine import utcnow
from control_plane.db.messages import dump_json
from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata

MARKETING = "marketing_messages"
STOP = "stop"
RESUME = "resume"

provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("entry_id", sa.String(CONTACT_ID_LEN), nullable=True),  # the WABA id (entry.id), whole
    sa.Column("phone_number_id", sa.String(CONTACT_ID_LEN), nullable=True),
    sa.Column("dedup_key", sa.String(64), nullable=False),
    sa.Column("value", LongText, nullable=False),  # the change's raw ``value``
    sa.Column("occurred_at", Timestamp, nullable=True),  # Meta's time for it, when it says
    sa.Column("received_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "dedup_key"),
    sa.Index("ix_provider_events_tenant_id_field_received_at", "tenant_id", "field", "received_at"),
)

contact_preferences = sa.Table(
    "contact_preferences",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("wa_id", sa.String(CONTACT_ID_LEN), primary_key=True),
    sa.Column("category", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(255), nullable=True),
    sa.Column("user_id", sa.String(CONTACT_ID_LEN), nullable=True),  # the contact's BSUID, when Meta gave one
    sa.Column("changed_at", Timestamp, nullable=False),  # Meta's timestamp of the preference
    sa.Column("updated_at", Timestamp, nullable=False),
)


# ------------------------------------------------------------------------------------ raw events


async def record_provider_event(conn: AsyncConnection, tenant_id: str, notice: dict[str, Any]) -> bool:
    """Keep one change raw (``notice``: ``field``, ``dedup_key``, ``raw``, ``entry_id``?,
    ``phone_number_id``?, ``occurred_at``?). True when it is new; False for a redelivery."""
    row = {
        "tenant_id": tenant_id,
        "field": clip(str(notice["field"]), 64),
        "entry_id": notice.get("entry_id"),  # ids whole (fields.py refuses longer)
        "phone_number_id": notice.get("phone_number_id"),
        "dedup_key": notice["dedup_key"],
        "value": dump_json(notice["raw"]),
        "occurred_at": notice.get("occurred_at"),
        "received_at": utcnow(),
    }
    result = await conn.execute(insert_ignore(conn, provider_events).values(**row))
    return bool(result.rowcount)


async def list_provider_events(
    conn: AsyncConnection, tenant_id: str, field: str | None = None
) -> list[dict[str, Any]]:
    """The tenant's kept changes, oldest first (``value`` as stored: JSON text)."""
    stmt = sa.select(provider_events).where(provider_events.c.tenant_id == tenant_id)
    if field is not None:
        stmt = stmt.where(provider_events.c.field == field)
    result = await conn.execute(stmt.order_by(provider_events.c.id))
    return [dict(r._mapping) for r in result]


# ---------------------------------------------------------------------------- contact preferences


async def set_contact_preference(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    wa_id: str,
    category: str,
    value: str,
    changed_at: dt.datetime,
    detail: str | None = None,
    user_id: str | None = None,
) -> bool:
    """Record a contact's preference unless a newer one is stored already. True when it was applied
    (new, or newer than the stored one)."""
    now = utcnow()
    c = contact_preferences.c
    values = {
        "value": clip(value, 16),
        "detail": clip(detail, 255),
        "user_id": user_id,
        "changed_at": changed_at,
        "updated_at": now,
    }
    key = {"tenant_id": tenant_id, "wa_id": wa_id, "category": clip(category, 32)}
    inserted = await conn.execute(insert_ignore(conn, contact_preferences).values(**key, **values))
    if inserted.rowcount:
        return True
    result = await conn.execute(
        contact_preferences.update()
        .where(
            c.tenant_id == key["tenant_id"],
            c.wa_id == key["wa_id"],
            c.category == key["category"],
            c.changed_at <= changed_at,
        )
        .values(**values)
    )
    return bool(result.rowcount)


async def get_contact_preferences(conn: AsyncConnection, tenant_id: str, wa_id: str) -> dict[str, str]:
    """category -> value for one contact."""
    c = contact_preferences.c
    result = await conn.execute(
        sa.select(c.category, c.value).where(c.tenant_id == tenant_id, c.wa_id == wa_id)
    )
    return {category: value for category, value in result}


async def marketing_stopped(conn: AsyncConnection, tenant_id: str, wa_ids: Iterable[str]) -> set[str]:
    """The contacts among ``wa_ids`` who stopped marketing messages (and did not resume)."""
    wanted = sorted({w for w in wa_ids if w})
    if not wanted:
        return set()
    c = contact_preferences.c
    result = await conn.execute(
        sa.select(c.wa_id).where(
            c.tenant_id == tenant_id, c.category == MARKETING, c.value == STOP, c.wa_id.in_(wanted)
        )
    )
    return {wa_id for (wa_id,) in result}
