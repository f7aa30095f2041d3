"""Messaging: outbox, transitions, idempotency

Revision ID: 0005
Revises: 0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPTS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _tenant_fk(table: str, primary_key: bool = False) -> sa.Column:
    return sa.Column(
        "tenant_id",
        sa.String(32),
        sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{table}_tenant_id_tenants"),
        nullable=False,
        primary_key=primary_key,
    )


def _message_fk(table: str, primary_key: bool = False) -> sa.Column:
    return sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE", name=f"fk_{table}_message_id_messages"),
        nullable=False,
        primary_key=primary_key,
    )


def upgrade() -> None:
    # One row per outbound message the CRM asked for: the dispatch state beside the message row.
    op.create_table(
        "outbox",
        _message_fk("outbox", primary_key=True),
        _tenant_fk("outbox"),
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
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_outbox_tenant_id_idempotency_key"),
        **OPTS,
    )
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index(
        "ix_outbox_tenant_id_state_next_attempt_at", "outbox", ["tenant_id", "state", "next_attempt_at"]
    )
    op.create_table(
        "message_transitions",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        _tenant_fk("message_transitions"),
        _message_fk("message_transitions"),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(20), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("at", TS, nullable=False),
        **OPTS,
    )
    op.create_index(
        "ix_message_transitions_tenant_id_message_id", "message_transitions", ["tenant_id", "message_id"]
    )
    # Per-tenant messaging options (the fallback template used outside the 24 h window).
    op.create_table(
        "messaging_settings",
        _tenant_fk("messaging_settings", primary_key=True),
        sa.Column("fallback_template_name", sa.String(255), nullable=True),
        sa.Column("fallback_template_language", sa.String(16), nullable=True),
        sa.Column("fallback_template_body_param", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        **OPTS,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes (dropping an FK's index first is refused by MariaDB).
    op.drop_table("messaging_settings")
    op.drop_table("message_transitions")
    op.drop_table("outbox")
