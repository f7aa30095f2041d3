"""Shared fixtures: a throwaway database migrated once per run and emptied before each test, settings
built from a dict (never os.environ), the app under aiohttp's test client, and tenant factories.

The database comes from TEST_DATABASE_URL (scripts/test sets it: MariaDB for the full run, SQLite for
the smoke run). Unset, a throwaway MariaDB database on 127.0.0.1 is created and dropped.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.app import create_app
from control_plane.config import Settings, load_settings, normalize_database_url
from control_plane.db import metadata
from control_plane.migrations import runner

# the chaos marker, the ``figures`` fixture and the "security and chaos figures" summary
pytest_plugins = ["tests.chaos.figures"]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
SECRET_KEY = "test-secret-key-" + "y" * 16
MARIADB_SERVER = os.environ.get("TEST_MARIADB_SERVER", "mysql://root@127.0.0.1:3306")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _sync_url(url: str) -> str:
    """An async SQLAlchemy URL -> its sync twin (pymysql / sqlite3) for fixtures."""
    return url.replace("mysql+aiomysql://", "mysql+pymysql://").replace("sqlite+aiosqlite://", "sqlite://")


def pytest_collection_modifyitems(config, items):
    url = os.environ.get("TEST_DATABASE_URL", "")
    if url.startswith("sqlite"):
        skip = pytest.mark.skip(reason="MariaDB-only test; this is the SQLite smoke run")
        for item in items:
            if "mariadb" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url() -> Any:
    """The async URL of a database migrated to head for this test run."""
    url = os.environ.get("TEST_DATABASE_URL")
    created = None
    if not url:
        created = f"gw_test_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(_sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {created} CHARACTER SET utf8mb4"))
        engine.dispose()
        url = f"{MARIADB_SERVER}/{created}"
    url = normalize_database_url("TEST_DATABASE_URL", url)
    runner.upgrade(url)
    yield url
    if created:
        engine = sa.create_engine(_sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {created}"))
        engine.dispose()


@pytest.fixture(scope="session")
def sync_engine(database_url: str):
    engine = sa.create_engine(_sync_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def empty_db(sync_engine) -> None:
    """Every table emptied, children first."""
    with sync_engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings from a dict: ``make_settings(REDIS_URL=..., HEARTBEAT_INTERVAL_S="1")``."""

    def make(**overrides: str) -> Settings:
        env = {
            "DATABASE_URL": database_url,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "SECRET_KEY": SECRET_KEY,
            "DATA_DIR": str(tmp_path / "data"),
            "SESSIONS_DIR": str(tmp_path / "sessions"),
            "LOG_LEVEL": "DEBUG",
            "BACKOFF_BASE_S": "0.2",
            "BACKOFF_CAP_S": "2",
            "HEARTBEAT_INTERVAL_S": "1",
            "BOOT_STAGGER_S": "0.01",
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return load_settings(env, generate_secrets=False)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
async def client(aiohttp_client, settings: Settings, empty_db):
    """The whole app (every cleanup context) behind aiohttp's test client."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def make_tenant(client, admin_headers) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Create a tenant through the API: returns its JSON plus ``headers`` for its API key."""

    async def make(name: str | None = None, *, sandbox: bool = False, api_client=None) -> dict[str, Any]:
        http = api_client or client
        resp = await http.post(
            "/api/tenants",
            json={"name": name or f"tenant-{secrets.token_hex(3)}", "sandbox": sandbox},
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        tenant = await resp.json()
        tenant["headers"] = {"Authorization": f"Bearer {tenant['api_key']}"}
        return tenant

    return make


@pytest.fixture
async def redis_url():
    """A Redis database reserved for tests, flushed before and after."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    await client.flushdb()
    yield REDIS_URL
    await client.flushdb()
    await client.aclose()
