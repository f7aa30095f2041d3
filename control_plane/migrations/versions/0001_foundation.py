"""Phase 1: tenants, API keys and per-tenant WhatsApp configuration.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import TS

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sandbox", sa.Boolean, nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE", name="fk_api_keys_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "whatsapp_config",
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE", name="fk_whatsapp_config_tenant_id_tenants"),
            primary_key=True,
        ),
        sa.Column("api_type", sa.String(20), nullable=False),
        sa.Column("fallback_policy", sa.String(30), nullable=False),
        sa.Column("phone_number_id", sa.String(64), nullable=True),
        sa.Column("waba_id", sa.String(64), nullable=True),
        sa.Column("api_version", sa.String(16), nullable=True),
        sa.Column("access_token_enc", sa.Text, nullable=True),
        sa.Column("app_secret_enc", sa.Text, nullable=True),
        sa.Column("verify_token_enc", sa.Text, nullable=True),
        sa.Column("verify_token_hash", sa.String(64), nullable=True),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("phone_number_id", name="uq_whatsapp_config_phone_number_id"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_whatsapp_config_verify_token_hash", "whatsapp_config", ["verify_token_hash"])


def downgrade() -> None:
    op.drop_table("whatsapp_config")
    op.drop_table("api_keys")
    op.drop_table("tenants")
