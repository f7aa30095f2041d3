"""Per-tenant WhatsApp Web session: what the admin asked for (desired state) apart from what the
supervisor sees (actual state), so a restarted control plane brings back exactly the sessions that
should run."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import utcnow
from control_plane.db.metadata import TenantId, Timestamp, metadata
from control_plane.db.tenants import tenants

DESIRED_RUNNING = "running"
DESIRED_STOPPED = "stopped"

REASON_LEN = 200
OWN_NUMBER_LEN = 512  # the bridge's own number (a wa_id), whole (migration 0011)

session_state = sa.Table(
    "session_state",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("desired_state", sa.String(16), nullable=False, default=DESIRED_STOPPED),
    sa.Column("state", sa.String(20), nullable=False, default="stopped"),
    sa.Column("reason", sa.String(REASON_LEN), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),  # the reason in words an admin can act on (0012)
    sa.Column("error", sa.Text, nullable=True),  # the technical text behind it (0012)
    sa.Column("since", Timestamp, nullable=False),
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
    sa.Column("last_exit_code", sa.Integer, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("own_number", sa.String(OWN_NUMBER_LEN), nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Index("ix_session_state_desired_state", "desired_state"),
)

_ACTUAL = ("state", "reason", "detail", "error", "since", "restarts", "last_exit_code", "pid", "own_number")


async def get_session_state(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    result = await conn.execute(sa.select(session_state).where(session_state.c.tenant_id == tenant_id))
    row = result.first()
    return dict(row._mapping) if row is not None else None


async def _upsert(conn: AsyncConnection, tenant_id: str, values: dict[str, Any]) -> None:
    """Insert-or-update in one statement (an UPDATE-then-INSERT takes gap locks on MariaDB, and two
    tenants' first writes then deadlock each other)."""
    now = utcnow()
    values = {**values, "updated_at": now}
    row = {
        "desired_state": DESIRED_STOPPED,
        "state": "stopped",
        "since": now,
        "restarts": 0,
        **values,
        "tenant_id": tenant_id,
    }
    if conn.dialect.name in ("mysql", "mariadb"):
        upsert = mysql_insert(session_state).values(**row)
        await conn.execute(upsert.on_duplicate_key_update(**values))
    elif conn.dialect.name == "sqlite":
        lite = sqlite_insert(session_state).values(**row)
        await conn.execute(lite.on_conflict_do_update(index_elements=["tenant_id"], set_=values))
    else:  # pragma: no cover - other dialects are not supported by the gateway
        result = await conn.execute(
            session_state.update().where(session_state.c.tenant_id == tenant_id).values(**values)
        )
        if not result.rowcount:
            await conn.execute(session_state.insert().values(**row))


async def set_desired_state(conn: AsyncConnection, tenant_id: str, desired: str) -> None:
    """Records what the admin asked for (``running`` / ``stopped``)."""
    if desired not in (DESIRED_RUNNING, DESIRED_STOPPED):
        raise ValueError(f"desired state must be running or stopped, got {desired!r}")
    await _upsert(conn, tenant_id, {"desired_state": desired})


async def record_actual_state(conn: AsyncConnection, tenant_id: str, **actual: Any) -> None:
    """Records what the supervisor sees (state, reason, detail, error, since, restarts, last_exit_code, pid,
    own_number); other keys are refused."""
    unknown = set(actual) - set(_ACTUAL)
    if unknown:
        raise ValueError(f"not actual-state columns: {sorted(unknown)}")
    if isinstance(actual.get("reason"), str) and len(actual["reason"]) > REASON_LEN:  # text: marked cut
        actual["reason"] = actual["reason"][: REASON_LEN - 1] + "…"
    if isinstance(actual.get("own_number"), str) and len(actual["own_number"]) > OWN_NUMBER_LEN:
        actual["own_number"] = None  # an id is stored whole or not at all
    await _upsert(conn, tenant_id, actual)


async def list_sessions_to_start(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Boot: every active tenant whose desired state is running and whose session is not ``failed``
    (failed waits for a person). Returns tenant_id and sandbox, oldest first."""
    query = (
        sa.select(session_state.c.tenant_id, tenants.c.sandbox)
        .join(tenants, tenants.c.id == session_state.c.tenant_id)
        .where(
            session_state.c.desired_state == DESIRED_RUNNING,
            session_state.c.state != "failed",
            tenants.c.is_active.is_(True),
        )
        .order_by(tenants.c.created_at, tenants.c.id)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def mark_stale_states_stopped(conn: AsyncConnection) -> int:
    """Boot: no bridge survives a control-plane restart (the sweep kills orphans), so every live
    state left by the previous run becomes ``stopped``. Returns how many rows changed."""
    result = await conn.execute(
        session_state.update()
        .where(session_state.c.state.notin_(("stopped", "failed", "logged_out")))
        .values(
            state="stopped",
            reason="control_plane_restart",
            detail=None,
            error=None,
            pid=None,
            since=utcnow(),
            updated_at=utcnow(),
        )
    )
    return result.rowcount


async def delete_session_state(conn: AsyncConnection, tenant_id: str) -> bool:
    result = await conn.execute(session_state.delete().where(session_state.c.tenant_id == tenant_id))
    return result.rowcount > 0
