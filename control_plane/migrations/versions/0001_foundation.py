"""Phase 1: tenants, API keys and per-tenant WhatsApp configuration.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import TABLE_OPTIONS, TS, tenant_fk, timestamps

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
        *timestamps(),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        tenant_fk("api_keys"),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "whatsapp_config",
        tenant_fk("whatsapp_config", primary_key=True),
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
        *timestamps(),
        sa.UniqueConstraint("phone_number_id", name="uq_whatsapp_config_phone_number_id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_whatsapp_config_verify_token_hash", "whatsapp_config", ["verify_token_hash"])


def downgrade() -> None:
    op.drop_table("whatsapp_config")
    op.drop_table("api_keys")
    op.drop_table("tenants")
