"""Provider ids stored whole: the columns that hold what Meta or WhatsApp Web names widened

Revision ID: 0011
Revises: 0010

Message ids (wamids, Web ids), contact ids (phone digits, BSUIDs, chat ids), a group member, the
actor of a change, the WABA and number ids of a notice and template names (Meta allows 512
characters) were cut to their column before: two long wamids sharing their first 128 characters were
one message. Each now has room for 512 characters (an id past it is refused where it arrives, never
cut: README, "Limits"); provider error codes 255. Every index over them stays under MariaDB's 3072
bytes (utf8mb4: 4 bytes a character; the widest, contact_preferences' key, is 576 characters).

Downgrade: rows whose id does not fit the old column are deleted first (with their messages, for a
conversation); the other values longer than their old column (error codes, actors, authors) are cut.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = 512
# (table, column, old length, new length, nullable, on downgrade: "delete" the row or "cut" the value)
WIDENED = (
    ("messages", "provider_message_id", 128, ID, True, "delete"),
    ("messages", "provider_user_id", 160, ID, True, "cut"),
    ("messages", "author", 64, ID, True, "cut"),
    ("messages", "error_code", 64, 255, True, "cut"),
    ("message_statuses", "provider_message_id", 128, ID, False, "delete"),
    ("message_statuses", "recipient_id", 160, ID, True, "cut"),
    ("message_statuses", "error_code", 64, 255, True, "cut"),
    ("message_transitions", "error_code", 64, 255, True, "cut"),
    ("message_changes", "provider_change_id", 128, ID, False, "delete"),
    ("message_changes", "target_provider_message_id", 128, ID, False, "delete"),
    ("message_changes", "actor", 64, ID, True, "cut"),
    ("conversations", "wa_id", 160, ID, False, "delete"),
    ("conversations", "bsuid", 160, ID, True, "cut"),
    ("contact_preferences", "wa_id", 32, ID, False, "delete"),
    ("contact_preferences", "user_id", 128, ID, True, "cut"),
    ("provider_events", "entry_id", 64, ID, True, "cut"),
    ("provider_events", "phone_number_id", 64, ID, True, "cut"),
    ("templates", "name", 255, ID, False, "delete"),
    ("templates", "remote_id", 64, 255, True, "cut"),
    ("messaging_settings", "fallback_template_name", 255, ID, True, "cut"),
    ("session_state", "own_number", 32, ID, True, "cut"),
)


def _alter(widen: bool) -> None:
    tables: dict[str, list[tuple[str, int, int, bool]]] = {}
    for table, column, old, new, nullable, _ in WIDENED:
        tables.setdefault(table, []).append((column, old, new, nullable))
    for table, columns in tables.items():
        with op.batch_alter_table(table) as batch:
            for column, old, new, nullable in columns:
                before, after = (old, new) if widen else (new, old)
                batch.alter_column(
                    column,
                    type_=sa.String(after),
                    existing_type=sa.String(before),
                    existing_nullable=nullable,
                )


def upgrade() -> None:
    _alter(widen=True)


def downgrade() -> None:
    long_conversations = "SELECT id FROM conversations WHERE LENGTH(wa_id) > 160"
    op.execute(f"DELETE FROM messages WHERE conversation_id IN ({long_conversations})")
    for table, column, old, _new, _nullable, how in WIDENED:
        if how == "delete":
            op.execute(f"DELETE FROM {table} WHERE LENGTH({column}) > {old}")
        else:
            op.execute(
                f"UPDATE {table} SET {column} = SUBSTR({column}, 1, {old}) WHERE LENGTH({column}) > {old}"
            )
    _alter(widen=False)
