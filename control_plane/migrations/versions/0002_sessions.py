"""Supervisor: per-tenant session desired and actual state

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import TABLE_OPTIONS, TS, tenant_fk

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_state",
        tenant_fk("session_state", primary_key=True),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("since", TS, nullable=False),
        sa.Column("restarts", sa.Integer, nullable=False),
        sa.Column("last_exit_code", sa.Integer, nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("own_number", sa.String(32), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_session_state_desired_state", "session_state", ["desired_state"])


def downgrade() -> None:
    op.drop_index("ix_session_state_desired_state", table_name="session_state")
    op.drop_table("session_state")
