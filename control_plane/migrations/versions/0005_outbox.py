"""Messaging: outbox, transitions, idempotency

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import (
    BIG_ID,
    TABLE_OPTIONS,
    TS,
    error_columns,
    message_fk,
    tenant_fk,
    timestamps,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _outbox()
    _message_transitions()
    _messaging_settings()


def _outbox() -> None:
    # One row per outbound message the CRM asked for: the dispatch state beside the message row.
    op.create_table(
        "outbox",
        message_fk("outbox", primary_key=True),
        tenant_fk("outbox"),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("requested_provider", sa.String(20), nullable=False, server_default="auto"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", TS, nullable=True),
        sa.Column("route_provider", sa.String(20), nullable=True),
        sa.Column("route_reason", sa.String(255), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        *timestamps(),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_outbox_tenant_id_idempotency_key"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index(
        "ix_outbox_tenant_id_state_next_attempt_at", "outbox", ["tenant_id", "state", "next_attempt_at"]
    )


def _message_transitions() -> None:
    op.create_table(
        "message_transitions",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        tenant_fk("message_transitions"),
        message_fk("message_transitions"),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(20), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        *error_columns(),
        sa.Column("at", TS, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_message_transitions_tenant_id_message_id", "message_transitions", ["tenant_id", "message_id"]
    )


def _messaging_settings() -> None:
    # Per-tenant messaging options (the fallback template used outside the 24 h window).
    op.create_table(
        "messaging_settings",
        tenant_fk("messaging_settings", primary_key=True),
        sa.Column("fallback_template_name", sa.String(255), nullable=True),
        sa.Column("fallback_template_language", sa.String(16), nullable=True),
        sa.Column("fallback_template_body_param", sa.Boolean, nullable=False, server_default=sa.false()),
        *timestamps(),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes (dropping an FK's index first is refused by MariaDB).
    op.drop_table("messaging_settings")
    op.drop_table("message_transitions")
    op.drop_table("outbox")
