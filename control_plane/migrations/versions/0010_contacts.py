"""Contacts known by a business-scoped user id (BSUID), and every field Meta sends kept

Revision ID: 0010
Revises: 0009

- ``conversations.wa_id`` holds a BSUID when the phone number is unknown (up to 135 characters):
  widened from 32 to 160; ``conversations.bsuid`` and ``conversations.username`` are new, with an
  index on (tenant_id, bsuid) (not unique: db/contacts.py merges duplicates).
- ``messages.provider_user_id`` (the sender's BSUID) and ``messages.raw`` (the provider's message
  object, verbatim JSON) are new.
- ``message_statuses.recipient_id`` holds a BSUID for sends to one: widened from 32 to 160.

Downgrade: conversations whose address does not fit the old ``wa_id`` (a long BSUID) are deleted
first, with their messages; recipient ids longer than 32 characters are cut.
"""

import sqlalchemy as sa
from alembic import op

from control_plane.migrations.columns import LONG_TEXT

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CONTACT_ID = sa.String(160)
OLD_ID = sa.String(32)


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("wa_id", type_=CONTACT_ID, existing_type=OLD_ID, existing_nullable=False)
        batch.add_column(sa.Column("bsuid", CONTACT_ID, nullable=True))
        batch.add_column(sa.Column("username", sa.String(256), nullable=True))
        batch.create_index("ix_conversations_tenant_id_bsuid", ["tenant_id", "bsuid"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("provider_user_id", CONTACT_ID, nullable=True))
        batch.add_column(sa.Column("raw", LONG_TEXT, nullable=True))
    with op.batch_alter_table("message_statuses") as batch:
        batch.alter_column("recipient_id", type_=CONTACT_ID, existing_type=OLD_ID, existing_nullable=True)


def downgrade() -> None:
    long_ids = "SELECT id FROM conversations WHERE LENGTH(wa_id) > 32"
    op.execute(f"DELETE FROM messages WHERE conversation_id IN ({long_ids})")
    op.execute("DELETE FROM conversations WHERE LENGTH(wa_id) > 32")
    op.execute(
        "UPDATE message_statuses SET recipient_id = SUBSTR(recipient_id, 1, 32) "
        "WHERE LENGTH(recipient_id) > 32"
    )
    with op.batch_alter_table("message_statuses") as batch:
        batch.alter_column("recipient_id", type_=OLD_ID, existing_type=CONTACT_ID, existing_nullable=True)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("raw")
        batch.drop_column("provider_user_id")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_tenant_id_bsuid")
        batch.drop_column("username")
        batch.drop_column("bsuid")
        batch.alter_column("wa_id", type_=OLD_ID, existing_type=CONTACT_ID, existing_nullable=False)
