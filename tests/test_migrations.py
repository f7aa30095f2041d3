"""Every migration goes up from empty to head and back down to empty (the plan's rollback), and the
tables the code declares (``control_plane.db.metadata``) are exactly what the migrations build."""

from __future__ import annotations

import contextlib
import pprint
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from control_plane.config import normalize_database_url
from control_plane.db import metadata
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


@contextlib.contextmanager
def _fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """The async URL of a new, empty database of ``kind`` (mariadb | sqlite), dropped afterwards."""
    if kind == "sqlite":
        yield normalize_database_url("x", f"sqlite:///{tmp_path / 'm.sqlite3'}")
        return
    name = f"gw_mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    try:
        yield normalize_database_url("x", f"{MARIADB_SERVER}/{name}")
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.mark.mariadb
def test_mariadb_empty_to_head_and_back(tmp_path):
    with _fresh_database("mariadb", tmp_path) as url:
        _walk(url)


@pytest.mark.smoke
def test_sqlite_empty_to_head_and_back(tmp_path):
    with _fresh_database("sqlite", tmp_path) as url:
        _walk(url)


@pytest.mark.smoke
@pytest.mark.parametrize("kind", [pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def test_metadata_matches_the_migrations(kind, tmp_path):
    """Alembic's autogenerate finds nothing to change between a database migrated to head and the
    declared tables: columns, types (each dialect's variant: DATETIME(6), MEDIUMTEXT, BIGINT on
    MariaDB; their plain forms on SQLite), nullability, server defaults, indexes, unique
    constraints and foreign keys."""
    with _fresh_database(kind, tmp_path) as url:
        runner.upgrade(url)
        engine = sa.create_engine(_sync_url(url))
        try:
            with engine.connect() as conn:
                context = MigrationContext.configure(
                    conn, opts={"compare_type": True, "compare_server_default": True}
                )
                differences = compare_metadata(context, metadata)
        finally:
            engine.dispose()
    assert differences == [], pprint.pformat(differences, width=110)
