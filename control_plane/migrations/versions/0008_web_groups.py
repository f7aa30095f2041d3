"""Web road: group conversations and the member who wrote each group message

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``kind``: 'group' for a WhatsApp group (wa_id ``<id>@g.us``), else 'individual'.
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="individual"))
    # ``author``: in a group conversation, the member who wrote the message (a wa_id: digits, or
    # ``<n>@lid`` when WhatsApp Web does not know the number); NULL elsewhere.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("author", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("author")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("kind")
