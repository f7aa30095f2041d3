"""The outbox's tables: dispatch state beside each outbound message row (``outbox``), the history of
its transitions (``message_transitions``) and per-tenant messaging settings; and the shape of one
transition row. The functions are in ``outbox.py`` (which re-exports them) and its siblings.

``outbox.state``::

    queued  -> sending (claimed: claimed_by/claimed_at is the lease) -> done
                 |  \\-> queued   (retryable error or pacing: next_attempt_at in the future)
                 \\--> unknown    (the provider may have it: a crash/timeout between send and answer;
                                   next_attempt_at = when to give up waiting for a confirmation and
                                   send again). Resolved by ``list_unknown`` + the sweeper.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from control_plane.db.metadata import ERROR_CODE_LEN, BigId, TenantId, Timestamp, error_columns, metadata
from control_plane.statuses import OutboxState

STATES = tuple(OutboxState)
REQUESTED_PROVIDERS = ("auto", "web", "business_api")

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column(
        "message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("requested_provider", sa.String(20), nullable=False, default="auto", server_default="auto"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_at", Timestamp, nullable=True),
    sa.Column("route_provider", sa.String(20), nullable=True),
    sa.Column("route_reason", sa.String(255), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant_id", "idempotency_key"),
    sa.Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
    sa.Index("ix_outbox_tenant_id_state_next_attempt_at", "tenant_id", "state", "next_attempt_at"),
)

message_transitions = sa.Table(
    "message_transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(20), nullable=True),
    sa.Column("reason", sa.String(255), nullable=True),
    *error_columns(),
    sa.Column("at", Timestamp, nullable=False),
    sa.Index("ix_message_transitions_tenant_id_message_id", "tenant_id", "message_id"),
)

messaging_settings = sa.Table(
    "messaging_settings",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("fallback_template_name", sa.String(512), nullable=True),  # Meta: names up to 512 (0011)
    sa.Column("fallback_template_language", sa.String(16), nullable=True),
    sa.Column(
        "fallback_template_body_param", sa.Boolean, nullable=False, default=False, server_default=sa.text("0")
    ),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)


def clip(value: Any, length: int) -> Any:
    """``value`` cut to ``length`` characters (an ellipsis marks the cut) when it is a longer string."""
    if isinstance(value, str) and len(value) > length:
        return value[: length - 1] + "…"
    return value


def transition_row(
    tenant_id: str,
    message_id: str,
    from_status: str | None,
    to_status: str,
    *,
    at: dt.datetime,
    provider: str | None = None,
    reason: str | None = None,
    error_code: Any = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """One ``message_transitions`` row (reason and error code clipped to their columns)."""
    return {
        "tenant_id": tenant_id,
        "message_id": message_id,
        "from_status": from_status,
        "to_status": to_status,
        "provider": provider,
        "reason": clip(reason, 255),
        "error_code": clip(str(error_code), ERROR_CODE_LEN) if error_code is not None else None,
        "error_message": error_message,
        "at": at,
    }
