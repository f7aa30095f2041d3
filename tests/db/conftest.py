"""Data-layer fixtures: a :class:`Database` on the run's test database, emptied before each test."""

from __future__ import annotations

import pytest

from control_plane.db import Database


@pytest.fixture
async def db(database_url: str, empty_db):
    database = Database(database_url, pool_size=2)
    yield database
    await database.close()
