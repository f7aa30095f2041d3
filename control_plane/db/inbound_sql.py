"""The inbound writers' MariaDB statements, written out once with the values inlined as literals.

SQLAlchemy Core compiles the multi-row constructs afresh per batch and the driver escapes every
parameter in Python; together they cost more CPU than MariaDB spends on the statements. Literals
are ``db.sql``'s: strings between quotes when there is nothing to escape in them, else as
``_utf8mb4 X'<hex>'`` (``literal_str``: safe whatever the sql_mode), datetimes and integers as digits.
The statements go out on the driver connection with ``sql.round_trip``/``sql.driver_round_trip``
(``db/inbound.py``). Their SQLAlchemy Core twins (SQLite, MySQL, ``sql.core_paths()``) are in
``db/inbound.py`` and ``db/conversations.py``.
"""

from __future__ import annotations

from typing import Any

from control_plane.db.conversations import is_bsuid
from control_plane.db.sql import literal_cache, literal_dt, literal_str


def existing_wamids_sql(tenant_id: str, by_provider: dict[str, list[str]]) -> str:
    tenant = literal_str(tenant_id)
    return " UNION ALL ".join(
        f"SELECT provider, provider_message_id FROM messages WHERE tenant_id = {tenant} AND provider = "
        f"{literal_str(provider)} AND provider_message_id IN ({','.join(map(literal_str, pmids))})"
        for provider, pmids in by_provider.items()
    )


_CONV_UPSERT_HEAD = (
    "INSERT INTO conversations (tenant_id, wa_id, contact_name, provider_last, last_inbound_at, "
    "last_message_at, last_message_id, unread_count, created_at, updated_at, kind, bsuid, username) VALUES "
)
_CONV_UPSERT_HEAD_IDS = _CONV_UPSERT_HEAD.replace("username)", "username, id)", 1)
# The same SET list as ``_upsert_conversations`` (order matters: MariaDB applies it left to right).
_CONV_UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE contact_name = COALESCE(VALUES(contact_name), conversations.contact_name), "
    "bsuid = COALESCE(VALUES(bsuid), conversations.bsuid), "
    "username = COALESCE(VALUES(username), conversations.username), "
    "provider_last = VALUES(provider_last), "
    "last_message_id = IF(conversations.last_message_at IS NULL OR VALUES(last_message_at) >= "
    "conversations.last_message_at, VALUES(last_message_id), conversations.last_message_id), "
    "last_message_at = IF(conversations.last_message_at IS NULL OR VALUES(last_message_at) >= "
    "conversations.last_message_at, VALUES(last_message_at), conversations.last_message_at), "
    "last_inbound_at = IF(conversations.last_inbound_at IS NULL OR VALUES(last_inbound_at) > "
    "conversations.last_inbound_at, VALUES(last_inbound_at), conversations.last_inbound_at), "
    "unread_count = conversations.unread_count + VALUES(unread_count), updated_at = VALUES(updated_at)"
)


def upsert_conversations_sql(
    rows: list[dict[str, Any]], *, returning: bool = True, ids: dict[str, int] | None = None
) -> str:
    """``ids`` (wa_id -> the conversation's id, when known): the rows carry their ids, so InnoDB finds
    each duplicate on the primary key at once. Without them it first inserts the row into the
    clustered index under a fresh auto-increment id, meets the duplicate on (tenant_id, wa_id) and
    takes that insert back before updating: about a third more of MariaDB's CPU for the upsert.

    A conversation addressed by a BSUID gets no id (NULL: a fresh one if it is inserted): another
    node may have merged it away, and it must not come back under its old id; the messages INSERT
    then misses its conversation and the batch goes the careful way, which finds where it went."""
    lit = literal_cache()  # the tenant and the batch's times repeat across rows
    values = ",".join(
        f"({lit(c['tenant_id'])},{literal_str(c['wa_id'])},{lit(c['contact_name'])},{lit(c['provider_last'])},"
        f"{lit(c['last_inbound_at'])},{lit(c['last_message_at'])},{literal_str(c['last_message_id'])},"
        f"{int(c['unread_count'])},{lit(c['created_at'])},{lit(c['updated_at'])},{lit(c['kind'])},"
        # (the optional strings, mostly absent, tested in line: a call per value costs more)
        f"{'NULL' if c['bsuid'] is None else literal_str(c['bsuid'])},"
        f"{'NULL' if c['username'] is None else literal_str(c['username'])}"
        + (_id(ids, c["wa_id"]) if ids is not None else ")")
        for c in rows
    )
    head = _CONV_UPSERT_HEAD if ids is None else _CONV_UPSERT_HEAD_IDS
    return head + values + (_CONV_UPSERT_TAIL + " RETURNING id, wa_id" if returning else _CONV_UPSERT_TAIL)


def _id(ids: dict[str, int], wa_id: str) -> str:
    return ",NULL)" if is_bsuid(wa_id) else f",{int(ids[wa_id])})"


_MESSAGES_INSERT_HEAD = (
    "INSERT IGNORE INTO messages (id, tenant_id, conversation_id, direction, provider, "
    "provider_message_id, type, content, status, error_code, error_message, created_at, "
    "updated_at, provider_timestamp, author, provider_user_id, raw) VALUES "
)


def _created(row: dict[str, Any]) -> str:
    """``created_at``'s literal, from the digits ``db.inbound._inbound_rows`` wrote once when present."""
    iso = row.get("_created_iso")
    if iso is None or len(iso) != 26:  # (a tz-aware time: literal_dt drops its offset)
        return literal_dt(row["created_at"])
    return f"'{iso[:10]} {iso[11:]}'"


def insert_messages_sql(rows: list[dict[str, Any]], *, ignore: bool = True) -> str:
    # The tenant, direction, status, update time and (whole-second) provider times repeat across a
    # batch's rows: quoted once each. ``created_at`` is distinct per row (the tenant clock), so it
    # skips the cache (its digits come with the row, ``_created``).
    lit = literal_cache()
    head = _MESSAGES_INSERT_HEAD if ignore else _MESSAGES_INSERT_HEAD.replace("INSERT IGNORE", "INSERT", 1)
    return head + ",".join(
        f"({literal_str(r['id'])},{lit(r['tenant_id'])},{int(r['conversation_id'])},{lit(r['direction'])},"
        f"{lit(r['provider'])},{literal_str(r['provider_message_id'])},{lit(r['type'])},{literal_str(r['content'])},"
        f"{lit(r['status'])},{lit(r['error_code'])},{lit(r['error_message'])},{_created(r)},"
        f"{lit(r['updated_at'])},{lit(r['provider_timestamp'])},{lit(r['author'])},"
        f"{'NULL' if r['provider_user_id'] is None else literal_str(r['provider_user_id'])},"
        f"{'NULL' if r['raw'] is None else literal_str(r['raw'])})"
        for r in rows
    )
