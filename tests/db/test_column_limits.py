"""Every length-limited column says where its values come from and what happens to a longer one, so a
new column cannot slip by unclassified; the migrated MariaDB schema has exactly these lengths; and a
MariaDB session refuses (error 1406) what does not fit instead of cutting it, whatever the server's
default sql_mode.

The outcomes are tested where the values arrive: tests/webhooks/test_column_limits.py (Cloud road),
tests/messaging/test_web_text_and_ids.py (Web road), tests/api/test_column_limits.py (API)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from control_plane.db import Database
from control_plane.db.engine import STRICT_MODE
from control_plane.db.metadata import metadata

# How a value reaches the column, and what happens past its length:
OURS = "made by the gateway (hex ids, enums, hashes, event names): always fits"
PROVIDER_ID = "a provider id (webhook, bridge, Graph API): stored whole, past the column refused"
API = "the API: 422 naming the field past the limit (maxLength in the OpenAPI document)"
TEXT = "free text (names, reasons, details): cut with a visible ellipsis"

COLUMNS: dict[str, str] = {
    **{f"{t}.tenant_id": OURS for t in (
        "event_log", "api_keys", "contact_preferences", "conversations", "message_changes",
        "message_statuses", "messaging_settings", "provider_events", "session_state", "templates",
        "tenant_event_seq",
        "whatsapp_config", "messages", "message_transitions", "outbox",
    )},
    "event_log.type": OURS,
    "tenants.id": OURS,
    "tenants.name": API,
    "api_keys.key_hash": OURS,
    "api_keys.prefix": OURS,
    "api_keys.label": API,
    "contact_preferences.wa_id": PROVIDER_ID,
    "contact_preferences.category": PROVIDER_ID,  # a key column: refused past 32 (fields.py)
    "contact_preferences.value": PROVIDER_ID,  # stop/resume: refused past 16 (fields.py)
    "contact_preferences.detail": TEXT,
    "contact_preferences.user_id": PROVIDER_ID,
    "conversations.wa_id": PROVIDER_ID,
    "conversations.contact_name": TEXT,
    "conversations.provider_last": OURS,
    "conversations.last_message_id": OURS,
    "conversations.kind": OURS,
    "conversations.bsuid": PROVIDER_ID,
    "conversations.username": TEXT,
    "message_changes.message_id": OURS,
    "message_changes.provider": OURS,
    "message_changes.target_provider_message_id": PROVIDER_ID,
    "message_changes.provider_change_id": PROVIDER_ID,
    "message_changes.kind": OURS,
    "message_changes.actor": PROVIDER_ID,
    "message_statuses.message_id": OURS,
    "message_statuses.provider": OURS,
    "message_statuses.provider_message_id": PROVIDER_ID,
    "message_statuses.status": OURS,
    "message_statuses.recipient_id": PROVIDER_ID,
    "message_statuses.error_code": TEXT,  # a provider's code, 255 characters
    "messaging_settings.fallback_template_name": API,
    "messaging_settings.fallback_template_language": API,
    "provider_events.field": PROVIDER_ID,  # refused past 64 (fields.py)
    "provider_events.entry_id": PROVIDER_ID,
    "provider_events.phone_number_id": PROVIDER_ID,
    "provider_events.dedup_key": OURS,
    "session_state.desired_state": OURS,
    "session_state.state": OURS,
    "session_state.reason": TEXT,
    "session_state.own_number": PROVIDER_ID,
    "templates.waba_id": API,  # the tenant's config (pattern ^[0-9]{1,64}$)
    "templates.name": PROVIDER_ID,
    "templates.language": PROVIDER_ID,  # refused past 16 (db/templates.py)
    "templates.status": TEXT,
    "templates.category": TEXT,
    "templates.remote_id": PROVIDER_ID,
    "templates.quality_score": TEXT,
    "whatsapp_config.api_type": API,
    "whatsapp_config.fallback_policy": API,
    "whatsapp_config.phone_number_id": API,
    "whatsapp_config.waba_id": API,
    "whatsapp_config.api_version": API,
    "whatsapp_config.verify_token_hash": OURS,
    "whatsapp_config.verification_status": OURS,
    "messages.id": OURS,
    "messages.direction": OURS,
    "messages.provider": OURS,
    "messages.provider_message_id": PROVIDER_ID,
    "messages.type": TEXT,  # a provider's type name: cut visibly past 32, whole in raw/content
    "messages.status": OURS,
    "messages.error_code": TEXT,
    "messages.origin": OURS,
    "messages.author": PROVIDER_ID,
    "messages.provider_user_id": PROVIDER_ID,
    "message_transitions.message_id": OURS,
    "message_transitions.from_status": OURS,
    "message_transitions.to_status": OURS,
    "message_transitions.provider": OURS,
    "message_transitions.reason": TEXT,
    "message_transitions.error_code": TEXT,
    "outbox.message_id": OURS,
    "outbox.idempotency_key": API,
    "outbox.request_hash": OURS,
    "outbox.requested_provider": API,
    "outbox.state": OURS,
    "outbox.claimed_by": OURS,
    "outbox.route_provider": OURS,
    "outbox.route_reason": TEXT,
}  # fmt: skip
# Ids that name a message or a contact: room for 512 characters (migration 0011).
WHOLE_IDS = {
    "contact_preferences.wa_id", "contact_preferences.user_id", "conversations.wa_id", "conversations.bsuid",
    "message_changes.target_provider_message_id", "message_changes.provider_change_id",
    "message_changes.actor",
    "message_statuses.provider_message_id", "message_statuses.recipient_id", "provider_events.entry_id",
    "provider_events.phone_number_id", "session_state.own_number", "templates.name",
    "messages.provider_message_id", "messages.author", "messages.provider_user_id",
}  # fmt: skip


def _string_columns() -> dict[str, int]:
    return {
        f"{table.name}.{column.name}": column.type.length
        for table in metadata.sorted_tables
        for column in table.c
        if isinstance(column.type, sa.String) and column.type.length
    }


@pytest.mark.smoke
def test_every_limited_column_is_classified():
    columns = _string_columns()
    assert sorted(set(columns) - set(COLUMNS)) == [], "classify the new columns in COLUMNS"
    assert sorted(set(COLUMNS) - set(columns)) == [], "COLUMNS names columns that do not exist"
    assert {c: columns[c] for c in WHOLE_IDS if columns[c] < 512} == {}
    assert {c for c, how in COLUMNS.items() if how == PROVIDER_ID} >= WHOLE_IDS


@pytest.mark.mariadb
def test_the_migrated_schema_has_these_lengths(sync_engine):
    if sync_engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps no VARCHAR length to compare (a mariadb test, run there)")
    with sync_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), CHARACTER_MAXIMUM_LENGTH "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND DATA_TYPE = 'varchar' AND TABLE_NAME != 'alembic_version'"
            )
        ).all()
    assert dict(rows) == _string_columns()


@pytest.mark.mariadb
async def test_a_session_refuses_a_value_longer_than_its_column(database_url, empty_db):
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite refuses no over-long value: strict sql_mode is MariaDB's (a mariadb test)")
    db = Database(database_url, pool_size=1)
    try:
        async with db.connect() as conn:
            assert (
                "STRICT_TRANS_TABLES"
                in (await conn.execute(sa.text("SELECT @@SESSION.sql_mode"))).scalar_one()
            )
            # what every new connection runs first makes even a lax server's session strict
            await conn.execute(sa.text("SET SESSION sql_mode = ''"))
            await conn.execute(sa.text(STRICT_MODE))
            assert (
                await conn.execute(sa.text("SELECT @@SESSION.sql_mode"))
            ).scalar_one() == "STRICT_TRANS_TABLES"
        with pytest.raises(sa.exc.DataError, match="1406"):  # Data too long: refused, not cut
            async with db.begin() as conn:
                await conn.execute(
                    sa.text("INSERT INTO tenants (id, name, sandbox, is_active, created_at, updated_at) "
                            "VALUES (:id, :name, 0, 1, NOW(), NOW())"),
                    {"id": "a" * 32, "name": "n" * 201},
                )  # fmt: skip
    finally:
        await db.close()
