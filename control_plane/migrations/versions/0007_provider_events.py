"""Webhook fields other than messages: raw provider events, contact preferences, template quality,
message origin

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import LONG_TEXT, TABLE_OPTIONS, TS, tenant_fk, tenant_row

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _provider_events()
    _contact_preferences()
    with op.batch_alter_table("templates") as batch:
        batch.add_column(sa.Column("quality_score", sa.String(16), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("origin", sa.String(20), nullable=True))
    op.create_index("ix_whatsapp_config_waba_id", "whatsapp_config", ["waba_id"])


def _provider_events() -> None:
    # Every change of a non-``messages`` webhook field, raw, once per (tenant, dedup key).
    op.create_table(
        "provider_events",
        *tenant_row("provider_events"),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=True),
        sa.Column("phone_number_id", sa.String(64), nullable=True),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("value", LONG_TEXT, nullable=False),
        sa.Column("occurred_at", TS, nullable=True),
        sa.Column("received_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "dedup_key", name="uq_provider_events_tenant_id_dedup_key"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_provider_events_tenant_id_field_received_at",
        "provider_events",
        ["tenant_id", "field", "received_at"],
    )


def _contact_preferences() -> None:
    # A contact's latest preference per category (Meta's user_preferences: marketing stop/resume).
    op.create_table(
        "contact_preferences",
        tenant_fk("contact_preferences", primary_key=True),
        sa.Column("wa_id", sa.String(32), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_index("ix_whatsapp_config_waba_id", table_name="whatsapp_config")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("quality_score")
    op.drop_table("contact_preferences")
    op.drop_index("ix_provider_events_tenant_id_field_received_at", table_name="provider_events")
    op.drop_table("provider_events")
