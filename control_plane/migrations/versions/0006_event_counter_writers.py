"""Event-log counters remember which transaction moved them last (predicted appends)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``writer``: a random token of the transaction that moved the counter last (NULL: one that
    # does not predict); ``prev_writer``: the one before it. A predicted append moves a counter
    # only if its last mover is the batch it predicted after (EventLogWriter.append_predicted).
    with op.batch_alter_table("tenant_event_seq") as batch:
        batch.add_column(sa.Column("writer", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_writer", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_event_seq") as batch:
        batch.drop_column("prev_writer")
        batch.drop_column("writer")
