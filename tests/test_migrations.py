"""Every migration goes up from empty to head and back down to empty (the plan's rollback)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from control_plane.config import normalize_database_url
from control_plane.migrations import runner
from tests.conftest import MARIADB_SERVER, _sync_url


def _tables(sync_url: str) -> set[str]:
    engine = sa.create_engine(sync_url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _walk(url: str) -> None:
    sync = _sync_url(url)
    assert _tables(sync) == set()
    runner.upgrade(url)
    at_head = _tables(sync)
    assert {"tenants", "api_keys", "whatsapp_config"} <= at_head
    revisions = runner.revisions()
    for _ in revisions:  # one phase back at a time, then forward again: every downgrade works alone
        runner.downgrade(url, "-1")
    assert _tables(sync) == set()
    runner.upgrade(url)
    assert _tables(sync) == at_head
    runner.downgrade(url, "base")
    assert _tables(sync) == set()


@pytest.mark.mariadb
def test_mariadb_empty_to_head_and_back():
    name = f"gw_mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        _walk(normalize_database_url("x", f"{MARIADB_SERVER}/{name}"))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.mark.smoke
def test_sqlite_empty_to_head_and_back(tmp_path):
    _walk(normalize_database_url("x", f"sqlite:///{tmp_path / 'm.sqlite3'}"))
