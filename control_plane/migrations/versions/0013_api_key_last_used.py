"""When each API key was last used

Revision ID: 0013
Revises: 0012

``api_keys.last_used_at`` (nullable: never used, or used before this revision). Written at most once
a minute per key (``db/tenants.py`` ``note_api_key_use``), shown in the admin panel's key list.
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import TS

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("last_used_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
