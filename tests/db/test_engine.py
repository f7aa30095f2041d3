"""The database handle: the dispatcher's pool runs READ COMMITTED on MariaDB (set on the engine)."""

from __future__ import annotations

import pytest

from control_plane.db import Database
from control_plane.messaging import dispatch_database

pytestmark = pytest.mark.smoke


async def _isolation(db: Database) -> str:
    async with db.begin() as conn:
        return await conn.get_isolation_level()  # asks the server (the dialect knows the variable)


@pytest.mark.mariadb
async def test_dispatcher_pool_reads_committed_and_the_default_pool_does_not(database_url):
    dispatch, default = dispatch_database(database_url), Database(database_url, pool_size=1)
    try:
        for _ in range(3):  # every connection of the pool, reused or new
            assert await _isolation(dispatch) == "READ COMMITTED"
        assert await _isolation(default) == "REPEATABLE READ"
    finally:
        await dispatch.close()
        await default.close()


async def test_isolation_level_is_ignored_on_sqlite(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}", isolation_level="READ COMMITTED")
    try:
        await db.ping()
    finally:
        await db.close()
