"""The database handle: one async engine per process, created in the app's cleanup context."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from control_plane.config import mask_url

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    """Naive UTC now, the form every timestamp column holds."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Every MariaDB session refuses a value longer than its column (error 1406) instead of cutting it with
# a warning, whatever the server's default: nothing is ever cut silently (README, "Limits").
STRICT_MODE = "SET SESSION sql_mode = TRIM(BOTH ',' FROM CONCAT(@@SESSION.sql_mode, ',STRICT_TRANS_TABLES'))"


class DatabaseUnavailable(Exception):
    """The database could not be reached or failed mid-statement (operational error)."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class Database:
    """Owns the engine. ``begin()`` for a transaction, ``connect()`` for reads.

    ``isolation_level`` (MariaDB/MySQL; e.g. ``"READ COMMITTED"``): every connection of this pool
    runs its transactions at that level (set once per connection, when it is made); SQLite has
    its own locking and ignores it."""

    def __init__(
        self, url: str, *, pool_size: int = 10, echo: bool = False, isolation_level: str | None = None
    ) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 10}
        else:
            if isolation_level is not None:
                kwargs["isolation_level"] = isolation_level
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_recycle=1800,
                pool_pre_ping=True,
                pool_timeout=10,
                connect_args={"connect_timeout": 5, "charset": "utf8mb4", "init_command": STRICT_MODE},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def begin(self):
        """``async with db.begin() as conn``: one transaction, committed on exit."""
        return self.engine.begin()

    def connect(self):
        return self.engine.connect()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({mask_url(self.url)!r})"


__all__ = ["AsyncConnection", "Database", "DatabaseUnavailable", "utcnow"]
