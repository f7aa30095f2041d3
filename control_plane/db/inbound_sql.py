"""The inbound writers' MariaDB statements, written out once with the values inlined as literals.

SQLAlchemy Core compiles the multi-row constructs afresh per batch and the driver escapes every
parameter in Python; together they cost more CPU than MariaDB spends on the statements. Strings go
as ``_utf8mb4 X'<hex>'`` (nothing to escape whatever the sql_mode; the column's collation applies,
so the unique indexes serve the lookups), datetimes and integers as digits. Their SQLAlchemy Core
twins (SQLite, MySQL) are in ``db/inbound.py`` and ``db/conversations.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import events as events_db


async def _driver(conn: AsyncConnection) -> Any:
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    return driver


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver errors raised inside come out as SQLAlchemy's (chained to the original)."""
    try:
        yield
    except Exception as exc:
        translated = events_db.as_sqlalchemy_error(exc, "inbound messages")
        if translated is exc:
            raise
        raise translated from exc


async def _query(driver: Any, sql: str) -> tuple[list[tuple], int]:
    with _translated():
        async with driver.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall()), cur.rowcount


async def driver_query(conn: AsyncConnection, sql: str) -> tuple[list[tuple], int]:
    """Run one parameterless statement on ``conn``'s driver connection, inside its transaction (no
    SQLAlchemy statement machinery); returns (rows, rowcount). Driver errors come out as SQLAlchemy's."""
    return await _query(await _driver(conn), sql)


async def driver_fetch(driver: Any, sql: str) -> list[tuple]:
    """Run one statement on a driver (aiomysql) connection inside its transaction; its rows."""
    return (await _query(driver, sql))[0]


async def run_deferred(conn: AsyncConnection, deferred: list[str]) -> None:
    """Send statements ``record_inbound_messages`` deferred (one round trip); empties the list."""
    if not deferred:
        return
    sql, deferred[:] = ";".join(deferred), []
    with _translated():
        async with (await _driver(conn)).cursor() as cur:
            await cur.execute(sql)
            while await cur.nextset():
                pass


def raw_mariadb(conn: AsyncConnection) -> bool:
    """MariaDB >= 10.5 (INSERT ... RETURNING): the raw statements below apply."""
    dialect = conn.dialect
    return (
        dialect.name in ("mysql", "mariadb")
        and bool(getattr(dialect, "is_mariadb", False))
        and (dialect.server_version_info or ()) >= (10, 5)
    )


def _lit(value: str | None) -> str:
    if value is None:
        return "NULL"
    if not value:
        return "''"
    return "_utf8mb4 X'" + value.encode().hex() + "'"


def _lit_dt(value: dt.datetime | None) -> str:
    # Like the driver's escape_datetime: the wall-clock digits (values are naive UTC here).
    if value is None:
        return "NULL"
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return "'" + value.isoformat(" ", "microseconds") + "'"


def existing_wamids_sql(tenant_id: str, by_provider: dict[str, list[str]]) -> str:
    tenant = _lit(tenant_id)
    return " UNION ALL ".join(
        f"SELECT provider, provider_message_id FROM messages WHERE tenant_id = {tenant} AND provider = "
        f"{_lit(provider)} AND provider_message_id IN ({','.join(map(_lit, pmids))})"
        for provider, pmids in by_provider.items()
    )


_CONV_UPSERT_HEAD = (
    "INSERT INTO conversations (tenant_id, wa_id, contact_name, provider_last, last_inbound_at, "
    "last_message_at, last_message_id, unread_count, created_at, updated_at) VALUES "
)
_CONV_UPSERT_HEAD_IDS = _CONV_UPSERT_HEAD.replace("updated_at)", "updated_at, id)", 1)
# The same SET list as ``_upsert_conversations`` (order matters: MariaDB applies it left to right).
_CONV_UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE contact_name = COALESCE(VALUES(contact_name), conversations.contact_name), "
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
    takes that insert back before updating: about a third more of MariaDB's CPU for the upsert."""
    lits: dict[Any, str] = {}  # the tenant and the batch's times repeat across rows

    def lit(value: Any) -> str:
        text = lits.get(value)
        if text is None:
            text = lits[value] = _lit_dt(value) if isinstance(value, dt.datetime) else _lit(value)
        return text

    values = ",".join(
        f"({lit(c['tenant_id'])},{_lit(c['wa_id'])},{lit(c['contact_name'])},{lit(c['provider_last'])},"
        f"{lit(c['last_inbound_at'])},{lit(c['last_message_at'])},{_lit(c['last_message_id'])},"
        f"{int(c['unread_count'])},{lit(c['created_at'])},{lit(c['updated_at'])}"
        + (f",{int(ids[c['wa_id']])})" if ids is not None else ")")
        for c in rows
    )
    head = _CONV_UPSERT_HEAD if ids is None else _CONV_UPSERT_HEAD_IDS
    return head + values + (_CONV_UPSERT_TAIL + " RETURNING id, wa_id" if returning else _CONV_UPSERT_TAIL)


_MESSAGES_INSERT_HEAD = (
    "INSERT IGNORE INTO messages (id, tenant_id, conversation_id, direction, provider, "
    "provider_message_id, type, content, status, error_code, error_message, created_at, "
    "updated_at, provider_timestamp) VALUES "
)


def insert_messages_sql(rows: list[dict[str, Any]], *, ignore: bool = True) -> str:
    lits: dict[Any, str] = {}  # tenant, direction, status and times repeat across a batch's rows

    def lit(value: Any) -> str:
        text = lits.get(value)
        if text is None:
            text = lits[value] = _lit_dt(value) if isinstance(value, dt.datetime) else _lit(value)
        return text

    head = _MESSAGES_INSERT_HEAD if ignore else _MESSAGES_INSERT_HEAD.replace("INSERT IGNORE", "INSERT", 1)
    return head + ",".join(
        f"({_lit(r['id'])},{lit(r['tenant_id'])},{int(r['conversation_id'])},{lit(r['direction'])},"
        f"{lit(r['provider'])},{_lit(r['provider_message_id'])},{lit(r['type'])},{_lit(r['content'])},"
        f"{lit(r['status'])},{lit(r['error_code'])},{lit(r['error_message'])},{lit(r['created_at'])},"
        f"{lit(r['updated_at'])},{lit(r['provider_timestamp'])})"
        for r in rows
    )
