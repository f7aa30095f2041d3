"""Per-tenant WhatsApp configuration. Secrets arrive here already encrypted (``*_enc`` columns)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import utcnow
from control_plane.db.metadata import TenantId, Timestamp, metadata
from control_plane.db.tenants import tenants

API_TYPES = ("web", "business_api", "both")
FALLBACK_POLICIES = ("web_only", "business_api_only", "web_first", "business_api_first")
# The fallback policy a config gets when it is saved without one: the one road it has, or, with both,
# the Web session first and the Business API when the session is not ready.
DEFAULT_FALLBACK_POLICY = {"web": "web_only", "business_api": "business_api_only", "both": "web_first"}

whatsapp_config = sa.Table(
    "whatsapp_config",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("api_type", sa.String(20), nullable=False, default="web"),
    sa.Column("fallback_policy", sa.String(30), nullable=False, default="web_only"),
    sa.Column("phone_number_id", sa.String(64), nullable=True, unique=True),
    sa.Column("waba_id", sa.String(64), nullable=True, index=True),  # webhooks route WABA fields by it
    sa.Column("api_version", sa.String(16), nullable=True),
    sa.Column("access_token_enc", sa.Text, nullable=True),
    sa.Column("app_secret_enc", sa.Text, nullable=True),
    sa.Column("verify_token_enc", sa.Text, nullable=True),
    sa.Column("verify_token_hash", sa.String(64), nullable=True, index=True),
    sa.Column("is_active", sa.Boolean, nullable=False, default=True),
    # Business API credentials checked against the Graph API (migration 0004): verified | unverified |
    # failed, why, and when. NULL when the Business API is not configured.
    sa.Column("verification_status", sa.String(16), nullable=True),
    sa.Column("verification_message", sa.Text, nullable=True),
    sa.Column("verified_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

COLUMNS = {c.name for c in whatsapp_config.c} - {"tenant_id", "created_at", "updated_at"}


async def get_whatsapp_config(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    result = await conn.execute(sa.select(whatsapp_config).where(whatsapp_config.c.tenant_id == tenant_id))
    row = result.first()
    return dict(row._mapping) if row else None


async def save_whatsapp_config(
    conn: AsyncConnection, tenant_id: str, values: dict[str, Any]
) -> dict[str, Any]:
    """Insert or update the tenant's config with ``values`` (column names). Raises IntegrityError when
    another tenant already holds the phone_number_id."""
    unknown = set(values) - COLUMNS
    if unknown:
        raise ValueError(f"unknown whatsapp_config columns: {sorted(unknown)}")
    now = utcnow()
    existing = await get_whatsapp_config(conn, tenant_id)
    if existing is None:
        api_type = values.get("api_type") or "web"
        row = {
            "api_type": api_type,
            "fallback_policy": DEFAULT_FALLBACK_POLICY[api_type],
            "is_active": True,
            **values,
            "tenant_id": tenant_id,
            "created_at": now,
            "updated_at": now,
        }
        await conn.execute(whatsapp_config.insert().values(**row))
    else:
        await conn.execute(
            whatsapp_config.update()
            .where(whatsapp_config.c.tenant_id == tenant_id)
            .values(**values, updated_at=now)
        )
    return await get_whatsapp_config(conn, tenant_id)  # type: ignore[return-value]


async def phone_number_id_owner(conn: AsyncConnection, phone_number_id: str) -> str | None:
    result = await conn.execute(
        sa.select(whatsapp_config.c.tenant_id).where(whatsapp_config.c.phone_number_id == phone_number_id)
    )
    row = result.first()
    return row[0] if row else None


async def find_config_by_phone_number_id(
    conn: AsyncConnection, phone_number_id: str
) -> dict[str, Any] | None:
    """The config (any tenant) that owns this Business number: webhooks route by it."""
    result = await conn.execute(
        sa.select(whatsapp_config).where(whatsapp_config.c.phone_number_id == phone_number_id)
    )
    row = result.first()
    return dict(row._mapping) if row else None


async def find_configs_by_verify_token_hash(conn: AsyncConnection, token_hash: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(whatsapp_config).where(whatsapp_config.c.verify_token_hash == token_hash)
    )
    return [dict(r._mapping) for r in result]


async def find_webhook_targets(conn: AsyncConnection, phone_number_ids: list[str]) -> list[dict[str, Any]]:
    """Routing facts for Meta webhooks (any tenant): per phone_number_id its tenant, encrypted app
    secret, WABA and whether both the config and the tenant are active."""
    if not phone_number_ids:
        return []
    return [dict(r._mapping) for r in await conn.execute(_TARGETS_BY_NUMBER, {"ids": phone_number_ids})]


async def find_waba_targets(conn: AsyncConnection, waba_ids: list[str]) -> list[dict[str, Any]]:
    """``find_webhook_targets`` by WABA id (template and account webhooks name the WABA, not a
    number): every tenant whose config holds one of ``waba_ids``."""
    if not waba_ids:
        return []
    return [dict(r._mapping) for r in await conn.execute(_TARGETS_BY_WABA, {"ids": waba_ids})]


def _targets() -> sa.Select:
    """The routing facts of webhook targets, config joined with its tenant."""
    c = whatsapp_config.c
    return sa.select(
        c.tenant_id,
        c.phone_number_id,
        c.waba_id,
        c.app_secret_enc,
        c.api_type,
        sa.and_(c.is_active, tenants.c.is_active).label("active"),
    ).join(tenants, tenants.c.id == c.tenant_id)


# Built once, the ids bound as one expanding parameter: a forged delivery may name thousands of ids,
# and an ``in_(list)`` built per call coerces each of them (most of the lookup's CPU).
_TARGETS_BY_NUMBER = _targets().where(
    whatsapp_config.c.phone_number_id.in_(sa.bindparam("ids", expanding=True))
)
_TARGETS_BY_WABA = (
    _targets()
    .where(whatsapp_config.c.waba_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(whatsapp_config.c.tenant_id)
)


async def find_active_configs_by_verify_token_hash(
    conn: AsyncConnection, token_hash: str
) -> list[dict[str, Any]]:
    """Configs holding this verify token whose config and tenant are both active (Meta's handshake)."""
    result = await conn.execute(
        sa.select(whatsapp_config.c.tenant_id)
        .join(tenants, tenants.c.id == whatsapp_config.c.tenant_id)
        .where(
            whatsapp_config.c.verify_token_hash == token_hash,
            whatsapp_config.c.is_active.is_(True),
            tenants.c.is_active.is_(True),
        )
    )
    return [dict(r._mapping) for r in result]


async def list_verify_tokens(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every config holding a verify token (any tenant): tenant_id, verify_token_enc, verify_token_hash."""
    c = whatsapp_config.c
    result = await conn.execute(
        sa.select(c.tenant_id, c.verify_token_enc, c.verify_token_hash).where(c.verify_token_enc.is_not(None))
    )
    return [dict(r._mapping) for r in result]


async def set_verify_token_hash(
    conn: AsyncConnection, tenant_id: str, verify_token_enc: str, token_hash: str
) -> bool:
    """Store ``token_hash`` for the tenant's verify token, only while that token is still
    ``verify_token_enc`` (a config saved meanwhile keeps its own hash). True when written."""
    c = whatsapp_config.c
    result = await conn.execute(
        whatsapp_config.update()
        .where(c.tenant_id == tenant_id, c.verify_token_enc == verify_token_enc)
        .values(verify_token_hash=token_hash)
    )
    return bool(result.rowcount)
