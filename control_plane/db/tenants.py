"""Tenants and their API keys."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.crypto import hash_api_key, key_prefix, new_api_key
from control_plane.db.engine import utcnow
from control_plane.db.metadata import TenantId, Timestamp, metadata

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", TenantId, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("sandbox", sa.Boolean, nullable=False, default=False),
    sa.Column("is_active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("label", sa.String(100), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("revoked_at", Timestamp, nullable=True),
    sa.Column("last_used_at", Timestamp, nullable=True),
)

# A key's last use is written at most this often (a read per request is there anyway; a write is not).
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def new_tenant_id() -> str:
    return uuid.uuid4().hex


def _row(row: sa.Row | None) -> dict[str, Any] | None:
    return dict(row._mapping) if row is not None else None


async def create_tenant(conn: AsyncConnection, name: str, *, sandbox: bool = False) -> dict[str, Any]:
    now = utcnow()
    values = {
        "id": new_tenant_id(),
        "name": name,
        "sandbox": sandbox,
        "is_active": True,
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(tenants.insert().values(**values))
    return values


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    result = await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))
    return _row(result.first())


async def list_tenants(conn: AsyncConnection, *, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(tenants).order_by(tenants.c.created_at, tenants.c.id).limit(limit).offset(offset)
    )
    return [dict(r._mapping) for r in result]


async def list_tenant_ids(conn: AsyncConnection) -> list[str]:
    result = await conn.execute(sa.select(tenants.c.id))
    return [r[0] for r in result]


async def update_tenant(conn: AsyncConnection, tenant_id: str, **changes: Any) -> dict[str, Any] | None:
    allowed = {k: v for k, v in changes.items() if k in {"name", "is_active"}}
    if allowed:
        allowed["updated_at"] = utcnow()
        await conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(**allowed))
    return await get_tenant(conn, tenant_id)


async def delete_tenant(conn: AsyncConnection, tenant_id: str) -> bool:
    """Remove the tenant and every row it owns: every table with a ``tenant_id`` column, children
    first (so it does not depend on ON DELETE CASCADE, which SQLite honours only with a pragma)."""
    for table in reversed(metadata.sorted_tables):
        if table.name != "tenants" and "tenant_id" in table.c:
            await conn.execute(table.delete().where(table.c.tenant_id == tenant_id))
    result = await conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
    return result.rowcount > 0


async def create_api_key(
    conn: AsyncConnection, tenant_id: str, *, label: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A new key for the tenant. Returns (the key in clear — shown once, never stored, row)."""
    key = new_api_key()
    values = {
        "tenant_id": tenant_id,
        "key_hash": hash_api_key(key),
        "prefix": key_prefix(key),
        "label": label,
        "created_at": utcnow(),
        "revoked_at": None,
        "last_used_at": None,
    }
    result = await conn.execute(api_keys.insert().values(**values))
    inserted = result.inserted_primary_key
    assert inserted is not None  # an INSERT of one row
    values["id"] = inserted[0]
    values.pop("key_hash")
    return key, values


async def list_api_keys(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(
            api_keys.c.id,
            api_keys.c.prefix,
            api_keys.c.label,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
            api_keys.c.last_used_at,
        )
        .where(api_keys.c.tenant_id == tenant_id)
        .order_by(api_keys.c.id)
    )
    return [dict(r._mapping) for r in result]


async def revoke_api_key(conn: AsyncConnection, tenant_id: str, key_id: int) -> bool:
    result = await conn.execute(
        api_keys.update()
        .where(api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount:
        return True
    exists = await conn.execute(
        sa.select(api_keys.c.id).where(api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id)
    )
    return exists.first() is not None


async def revoke_all_api_keys(conn: AsyncConnection, tenant_id: str) -> int:
    result = await conn.execute(
        api_keys.update()
        .where(api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount


async def live_key_hashes(conn: AsyncConnection, key_hashes: Collection[str]) -> set[str]:
    """Of these API key digests, the ones still live: not revoked, tenant present and active (the
    realtime relay re-checks its open connections with this)."""
    if not key_hashes:
        return set()
    result = await conn.execute(
        sa.select(api_keys.c.key_hash)
        .join(tenants, api_keys.c.tenant_id == tenants.c.id)
        .where(
            api_keys.c.key_hash.in_(list(key_hashes)),
            api_keys.c.revoked_at.is_(None),
            tenants.c.is_active == sa.true(),
        )
    )
    return {row[0] for row in result}


async def find_tenant_by_api_key(conn: AsyncConnection, key: str) -> dict[str, Any] | None:
    """The tenant owning this live (not revoked) key, or None."""
    found = await find_api_key_owner(conn, key)
    return found[0] if found else None


async def find_api_key_owner(conn: AsyncConnection, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the tenant, the key's ``id`` and ``last_used_at``) for this live (not revoked) key, or None.
    The lookup is by SHA-256 of the key: the database compares digests, so timing reveals nothing
    about the key itself."""
    result = await conn.execute(
        sa.select(tenants, api_keys.c.id.label("_key_id"), api_keys.c.last_used_at.label("_key_last_used_at"))
        .join(api_keys, api_keys.c.tenant_id == tenants.c.id)
        .where(api_keys.c.key_hash == hash_api_key(key), api_keys.c.revoked_at.is_(None))
    )
    row = _row(result.first())
    if row is None:
        return None
    key_info = {"id": row.pop("_key_id"), "last_used_at": row.pop("_key_last_used_at")}
    return row, key_info


def api_key_use_is_stale(last_used_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a key's stored last use is old enough to be written again."""
    return last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION


async def note_api_key_use(conn: AsyncConnection, tenant_id: str, key_id: int, now: dt.datetime) -> bool:
    """Record that the key was used at ``now``, unless a use within ``LAST_USED_RESOLUTION`` is
    already stored (a concurrent request may have written it): at most one write a minute per key."""
    result = await conn.execute(
        api_keys.update()
        .where(
            api_keys.c.tenant_id == tenant_id,
            api_keys.c.id == key_id,
            sa.or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
    )
    return bool(result.rowcount)
