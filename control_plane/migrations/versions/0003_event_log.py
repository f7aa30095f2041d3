"""Realtime: per-tenant event log with a gapless seq

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import BIG_ID, LONG_TEXT, TS

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("seq", BIG_ID, nullable=False, autoincrement=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("data", LONG_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="pk_event_log"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_event_log_ts", "event_log", ["ts"])
    op.create_table(
        "tenant_event_seq",
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE", name="fk_tenant_event_seq_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("last_seq", BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_event_seq"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("tenant_event_seq")
    op.drop_index("ix_event_log_ts", table_name="event_log")
    op.drop_table("event_log")
