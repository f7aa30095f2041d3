"""Business API: conversations, messages, templates

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import (
    BIG_ID,
    LONG_TEXT,
    TABLE_OPTIONS,
    TS,
    error_columns,
    tenant_fk,
    timestamps,
)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _verification_columns()
    _conversations()
    _messages()
    _message_statuses()
    _templates()


def _verification_columns() -> None:
    # Business API credentials as last checked against the Graph API (verified|unverified|failed).
    with op.batch_alter_table("whatsapp_config") as batch:
        batch.add_column(sa.Column("verification_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("verification_message", sa.Text, nullable=True))
        batch.add_column(sa.Column("verified_at", TS, nullable=True))


def _conversations() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        tenant_fk("conversations"),
        sa.Column("wa_id", sa.String(32), nullable=False),
        sa.Column("contact_name", sa.String(256), nullable=True),
        sa.Column("provider_last", sa.String(20), nullable=True),
        sa.Column("last_inbound_at", TS, nullable=True),
        sa.Column("last_message_at", TS, nullable=True),
        sa.Column("last_message_id", sa.String(32), nullable=True),
        sa.Column("unread_count", sa.Integer, nullable=False, server_default="0"),
        *timestamps(),
        sa.UniqueConstraint("tenant_id", "wa_id", name="uq_conversations_tenant_id_wa_id"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_conversations_tenant_id_last_message_at", "conversations", ["tenant_id", "last_message_at"]
    )


def _messages() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), primary_key=True),
        tenant_fk("messages"),
        sa.Column(
            "conversation_id",
            BIG_ID,
            sa.ForeignKey(
                "conversations.id", ondelete="CASCADE", name="fk_messages_conversation_id_conversations"
            ),
            nullable=False,
        ),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("provider", sa.String(20), nullable=True),
        sa.Column("provider_message_id", sa.String(128), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("content", LONG_TEXT, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *error_columns(),
        *timestamps(),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("read_at", TS, nullable=True),
        sa.Column("failed_at", TS, nullable=True),
        sa.Column("provider_timestamp", TS, nullable=True),
        sa.UniqueConstraint(
            "tenant_id",
            "provider",
            "provider_message_id",
            name="uq_messages_tenant_id_provider_provider_message_id",
        ),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_messages_tenant_id_conversation_id_created_at_id",
        "messages",
        ["tenant_id", "conversation_id", "created_at", "id"],
    )


def _message_statuses() -> None:
    op.create_table(
        "message_statuses",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        tenant_fk("message_statuses"),
        sa.Column("message_id", sa.String(32), nullable=True),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("provider_message_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("occurred_at", TS, nullable=True),
        sa.Column("recipient_id", sa.String(32), nullable=True),
        *error_columns(),
        sa.Column("raw", LONG_TEXT, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint(
            "tenant_id",
            "provider_message_id",
            "status",
            name="uq_message_statuses_tenant_id_provider_message_id_status",
        ),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_message_statuses_tenant_id_message_id", "message_statuses", ["tenant_id", "message_id"]
    )


def _templates() -> None:
    op.create_table(
        "templates",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        tenant_fk("templates"),
        sa.Column("waba_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("components", LONG_TEXT, nullable=False),
        sa.Column("remote_id", sa.String(64), nullable=True),
        sa.Column("synced_at", TS, nullable=False),
        *timestamps(),
        sa.UniqueConstraint("tenant_id", "name", "language", name="uq_templates_tenant_id_name_language"),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("templates")
    op.drop_index("ix_message_statuses_tenant_id_message_id", table_name="message_statuses")
    op.drop_table("message_statuses")
    op.drop_index("ix_messages_tenant_id_conversation_id_created_at_id", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_conversations_tenant_id_last_message_at", table_name="conversations")
    op.drop_table("conversations")
    with op.batch_alter_table("whatsapp_config") as batch:
        batch.drop_column("verified_at")
        batch.drop_column("verification_message")
        batch.drop_column("verification_status")
