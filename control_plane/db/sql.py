"""SQL text for the MariaDB fast paths, and the driver's errors.

The hot paths (webhook ingest, the dispatcher's claim and records, the event log) write their
statements out with the values inlined as literals and send several per round trip on the driver
(aiomysql) connection, inside the caller's transaction: SQLAlchemy Core compiles multi-row constructs
afresh per batch and the driver escapes every parameter in Python, which at a few thousand rows a
second was most of the CPU. Everything such a path needs is here, once:

- :func:`literal` (and the typed :func:`literal_str`, :func:`literal_hex`, :func:`literal_dt`): the
  one SQL quoter, and :func:`literal_cache` for values that repeat across a statement's rows;
- :func:`round_trip` / :func:`driver_round_trip`: statements in one trip, a result per statement;
- :func:`as_sqlalchemy_error`: the driver's exceptions as the engine's, so callers catch one family;
- :func:`is_deadlock`, :func:`is_connection_lost`, :func:`is_db_outage`: what a failure means;
  :func:`retry_on_deadlock`: the one retry of a whole transaction;
- :func:`raw_mariadb`: whether the fast paths apply (and :func:`core_paths`, which turns them off
  so tests run the SQLAlchemy Core twins on MariaDB too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pymysql.err as driver_errors
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.engine import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Result = tuple[list[tuple[Any, ...]], int]  # (rows, rowcount) of one statement

# InnoDB rolled the transaction back (deadlock) or gave up waiting for a row lock: run it again.
DEADLOCK_CODES = frozenset({1213, 1205})
CONNECTION_LOST_FROM = 2000  # client-side codes (2000+): server gone, lost during a query, no connection


# ------------------------------------------------------------------------------------------- literals


def literal_hex(value: str) -> str:
    """A string as ``_utf8mb4 X'<hex>'``: nothing to escape whatever the sql_mode (the column's
    collation applies, so indexes serve lookups on it; ``X''`` is the empty string). The event
    log's per-event loops write this expression inline (a call per event cost 18 %)."""
    return f"_utf8mb4 X'{value.encode().hex()}'"


def literal_str(value: str) -> str:
    """A string literal, as short as it can be written with nothing to escape whatever the sql_mode:
    ASCII letters and digits as they are (ids, names); other printable text without a quote or a
    backslash between quotes (``_utf8mb4'...'`` when it is not ASCII: wamids, JSON, names: half the
    bytes of hex, for the server to read and the socket to carry); anything else (quotes,
    backslashes, control characters, lone surrogates) as :func:`literal_hex`."""
    if value.isascii():
        if value.isalnum():  # isascii is O(1); isalnum stops at the first other char
            return f"'{value}'"
        if value.isprintable() and "'" not in value and "\\" not in value:
            return f"'{value}'"
    elif value.isprintable() and "'" not in value and "\\" not in value:
        return f"_utf8mb4'{value}'"
    return f"_utf8mb4 X'{value.encode().hex()}'"


def literal_dt(value: dt.datetime) -> str:
    """A DATETIME(6) literal: the wall-clock digits with microseconds, like the driver's
    ``escape_datetime`` (values are naive UTC here; a tzinfo is dropped, not converted)."""
    if value.tzinfo is None:
        return f"'{value.isoformat(' ', 'microseconds')}'"
    return f"'{value.replace(tzinfo=None).isoformat(' ', 'microseconds')}'"


def literal(value: Any) -> str:
    """The SQL literal of ``value``: None, str, bool, int, float, datetime, date, bytes."""
    if value is None:
        return "NULL"
    kind = type(value)
    if kind is str:  # the common case
        return literal_str(value)
    if kind is int:
        return str(value)
    if isinstance(value, dt.datetime):
        return literal_dt(value)
    if isinstance(value, str):  # a str subclass (a StrEnum): its characters
        return literal_str(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no SQL literal for {value!r}")
        return repr(value)
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, bytes | bytearray):
        return f"X'{bytes(value).hex()}'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def literal_cache() -> Callable[[Any], str]:
    """A :func:`literal` for one statement's values that repeat across its rows (the tenant, the
    batch's times, statuses): each distinct value is quoted once. Values are looked up by equality,
    so do not mix ones that compare equal across types (1, 1.0, True)."""
    quoted: dict[Any, str] = {}

    def cached(value: Any) -> str:
        text = quoted.get(value)
        if text is None:
            text = quoted[value] = literal(value)
        return text

    return cached


# ------------------------------------------------------------------------------------ driver errors


def driver_error(exc: BaseException) -> BaseException:
    """The driver's exception behind ``exc`` (a SQLAlchemy wrapper's ``orig``), or ``exc`` itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def error_code(exc: BaseException) -> int | None:
    """The server's (or client's) error number behind ``exc``, if it has one: ``exc`` is the
    engine's wrapper of a driver error, or a driver error (a number in any other exception's
    ``args`` is no error code)."""
    orig = driver_error(exc)
    if not isinstance(exc, sa.exc.DBAPIError) and not isinstance(orig, driver_errors.MySQLError):
        return None
    args = getattr(orig, "args", None)
    return args[0] if args and isinstance(args[0], int) else None


def as_sqlalchemy_error(exc: BaseException, what: str = "driver statement") -> BaseException:
    """The engine's exception types for the driver's, so callers catch one family."""
    if isinstance(exc, driver_errors.IntegrityError):
        return sa.exc.IntegrityError(what, None, exc)
    if isinstance(exc, driver_errors.OperationalError | driver_errors.InterfaceError | ConnectionError):
        return sa.exc.OperationalError(what, None, exc)
    if isinstance(exc, driver_errors.MySQLError):
        return sa.exc.DBAPIError(what, None, exc)
    return exc


@contextlib.contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Driver errors raised inside come out as SQLAlchemy's (chained to the original)."""
    try:
        yield
    except Exception as exc:
        translated = as_sqlalchemy_error(exc, what)
        if translated is exc:
            raise
        raise translated from exc


def is_deadlock(exc: BaseException) -> bool:
    """A deadlock or lock wait timeout: InnoDB rolled the statement (or transaction) back."""
    return error_code(exc) in DEADLOCK_CODES


def is_connection_lost(exc: BaseException) -> bool:
    """The client lost its connection: codes 2000+ (server gone, lost during a query, not connected),
    the driver's InterfaceError, socket errors."""
    if isinstance(exc, sa.exc.InterfaceError | ConnectionError):
        return True
    orig = driver_error(exc)
    if isinstance(orig, driver_errors.InterfaceError | ConnectionError):
        return True
    code = error_code(exc)
    return code is not None and code >= CONNECTION_LOST_FROM


# What an outage looks like (sa.exc.TimeoutError: the pool's, no connection within pool_timeout).
_OUTAGES = (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, OSError)


def is_db_outage(exc: BaseException) -> bool:
    """The database cannot be reached: down, the pool exhausted, the connection gone (nothing to
    gain from trying the work again piece by piece; callers answer "unavailable")."""
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


async def retry_on_deadlock(
    attempt: Callable[[], Awaitable[T]],
    *,
    attempts: int = 10,
    backoff_s: float = 0.01,
    what: str = "transaction",
    lost: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Run ``attempt()`` (one whole transaction) again when it fails on a deadlock or a lock wait
    timeout, at most ``attempts`` times in all, sleeping a random ``backoff_s * n`` before the n-th
    retry (none when 0). With ``lost``, also after a lost connection, awaiting ``lost()`` first
    (forget a held connection): safe only when the transaction is idempotent, as a COMMIT may have
    gone through before the connection went. Any other error, and the last failure, propagate."""
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except Exception as exc:
            gone = lost is not None and is_connection_lost(exc)
            if n >= attempts or not (gone or is_deadlock(exc)):
                raise
            log.info("%s: %s; trying again (%d attempts left)", what, exc, attempts - n)
            if gone:
                assert lost is not None
                await lost()
        if backoff_s:
            await asyncio.sleep(backoff_s * n * random.random())
    raise AssertionError("unreachable")


# -------------------------------------------------------------------------------------- round trips


async def driver_round_trip(
    driver: Any,
    statements: Sequence[str],
    *,
    what: str = "driver statement",
    after_first: Callable[[], None] | None = None,
) -> list[Result]:
    """Send ``statements`` in ONE round trip on a driver (aiomysql) connection, inside its
    transaction; returns (rows, rowcount) per statement. ``after_first()`` runs once the first
    statement's result is in (the rest are read after it). Driver errors come out as SQLAlchemy's."""
    out: list[Result] = []
    with translated_errors(what):
        async with driver.cursor() as cur:
            await cur.execute(";".join(statements))
            out.append((list(await cur.fetchall() or ()), cur.rowcount))
            if after_first is not None:
                after_first()
            for _ in range(len(statements) - 1):
                await cur.nextset()
                out.append((list(await cur.fetchall() or ()), cur.rowcount))
    return out


async def round_trip(
    conn: AsyncConnection, statements: Sequence[str], *, what: str = "driver statement"
) -> list[Result]:
    """:func:`driver_round_trip` on ``conn``'s driver connection, inside ``conn``'s transaction."""
    raw = await conn.get_raw_connection()
    return await driver_round_trip(raw.driver_connection, statements, what=what)


# ----------------------------------------------------------------------------------------- dialects

_core_only: contextvars.ContextVar[bool] = contextvars.ContextVar("core_only", default=False)


def is_mysql(conn: AsyncConnection) -> bool:
    """MariaDB or MySQL (the driver round trips apply)."""
    return conn.dialect.name in ("mysql", "mariadb")


def core_only() -> bool:
    """Inside :func:`core_paths`: the written-out fast paths are off."""
    return _core_only.get()


def raw_mysql(conn: AsyncConnection) -> bool:
    """MariaDB or MySQL, with the fast paths on: the statements that need no MariaDB-only syntax."""
    return conn.dialect.name in ("mysql", "mariadb") and not _core_only.get()


def raw_mariadb(conn: AsyncConnection) -> bool:
    """MariaDB >= 10.5 (INSERT ... RETURNING, VALUES in derived tables): the written-out fast paths
    apply; elsewhere (SQLite, MySQL, or inside :func:`core_paths`) their SQLAlchemy Core twins run."""
    dialect = conn.dialect
    return (
        bool(getattr(dialect, "is_mariadb", False))
        and (dialect.server_version_info or ()) >= (10, 5)
        and not _core_only.get()
    )


@contextlib.contextmanager
def core_paths() -> Iterator[None]:
    """Within: :func:`raw_mariadb` is false, so functions with a fast path take their Core twin
    (tests compare the two on MariaDB)."""
    token = _core_only.set(True)
    try:
        yield
    finally:
        _core_only.reset(token)


__all__ = [
    "DEADLOCK_CODES",
    "as_sqlalchemy_error",
    "core_only",
    "core_paths",
    "driver_error",
    "driver_round_trip",
    "error_code",
    "is_connection_lost",
    "is_db_outage",
    "is_deadlock",
    "is_mysql",
    "literal",
    "literal_cache",
    "literal_dt",
    "literal_hex",
    "literal_str",
    "raw_mariadb",
    "raw_mysql",
    "retry_on_deadlock",
    "round_trip",
    "translated_errors",
]
