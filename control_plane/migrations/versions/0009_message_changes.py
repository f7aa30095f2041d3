"""Edits, revokes and reactions: the changed message's columns and the changes' history

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import LONG_TEXT, TABLE_OPTIONS, TS, tenant_row, unique

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("edited_at", TS, nullable=True))
        batch.add_column(sa.Column("deleted_at", TS, nullable=True))
        batch.add_column(sa.Column("reactions", LONG_TEXT, nullable=True))
    op.create_table(
        "message_changes",
        *tenant_row("message_changes"),
        # NULL while the change waits for its target message (it arrived first).
        sa.Column("message_id", sa.String(32), nullable=True),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("target_provider_message_id", sa.String(128), nullable=False),
        sa.Column("provider_change_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("payload", LONG_TEXT, nullable=True),
        sa.Column("occurred_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_at", TS, nullable=True),
        unique("message_changes", "tenant_id", "provider", "provider_change_id"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_message_changes_tenant_id_provider_target_provider_message_id",
        "message_changes",
        ["tenant_id", "provider", "target_provider_message_id"],
    )
    op.create_index("ix_message_changes_tenant_id_message_id", "message_changes", ["tenant_id", "message_id"])


def downgrade() -> None:
    op.drop_index("ix_message_changes_tenant_id_message_id", table_name="message_changes")
    op.drop_index(
        "ix_message_changes_tenant_id_provider_target_provider_message_id", table_name="message_changes"
    )
    op.drop_table("message_changes")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reactions")
        batch.drop_column("deleted_at")
        batch.drop_column("edited_at")
