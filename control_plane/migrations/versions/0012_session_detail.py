"""Why a session failed, kept with it

Revision ID: 0012
Revises: 0011

- ``session_state.detail``: the reason in words an admin can act on (``supervisor/causes.py``).
- ``session_state.error``: the technical text behind it (the bridge's error message, e.g.
  ``initialize failed: net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/``).

Downgrade drops both (they are explanations; the state and its reason code stay).
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_state") as batch:
        batch.add_column(sa.Column("detail", sa.Text, nullable=True))
        batch.add_column(sa.Column("error", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_state") as batch:
        batch.drop_column("error")
        batch.drop_column("detail")
