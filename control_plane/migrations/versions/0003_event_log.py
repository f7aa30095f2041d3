"""Realtime: per-tenant event log with a gapless seq

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import BIG_ID, LONG_TEXT, TABLE_OPTIONS, TS, tenant_fk

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
        **TABLE_OPTIONS,
    )
    op.create_index("ix_event_log_ts", "event_log", ["ts"])
    op.create_table(
        "tenant_event_seq",
        tenant_fk("tenant_event_seq"),
        sa.Column("last_seq", BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_event_seq"),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("tenant_event_seq")
    op.drop_index("ix_event_log_ts", table_name="event_log")
    op.drop_table("event_log")
