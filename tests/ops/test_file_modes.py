"""Every file the service creates is its user's only: files 0600, folders 0700 (DATA_DIR: the SQLite
database and its -wal/-shm, the generated secrets, the send journal; SESSIONS_DIR: the tenants'
folders and what the bridges write there). An older install's looser files are tightened at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp
import pytest

from tests.ops.server import Server, free_port
from tests.ops.test_graceful_shutdown import api, ready_sandbox_tenant
from tests.support import wait_for

pytestmark = pytest.mark.timeout(180)


def loose(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that its group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & 0o077:
            found.append(f"{oct(st.st_mode & 0o777)} {path.relative_to(root.parent)}")
    return found


async def _is_sent(status) -> bool:
    return await status() in ("sent", "delivered", "read")


def fresh_env(work: Path) -> dict[str, str]:
    """No DATABASE_URL, ADMIN_TOKEN or SECRET_KEY: SQLite in DATA_DIR, secrets generated there."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEST_", "PYTEST")) and k not in ("DATABASE_URL", "ADMIN_TOKEN", "SECRET_KEY")
    }
    return {
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(work / "data"),
        "SESSIONS_DIR": str(work / "sessions"),
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def work(tmp_path: Path) -> Path:
    old = os.umask(0o022)  # what a shell usually has: the service must not depend on it
    yield tmp_path
    os.umask(old)


async def test_a_fresh_install_writes_private_files_only(work):
    server = Server(fresh_env(work), work / "server.log", migrate=True)
    try:
        await server.start()
        token = (work / "data" / "admin_token").read_text().strip()
        admin = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            # a session that ran (bridge files) and a message sent (the send journal)
            tenant = await ready_sandbox_tenant(http, server, "modes", admin=admin)
            sent = await api(
                http,
                server,
                "POST",
                "/api/messages",
                tenant["headers"],
                json={"to": "15550001111", "text": "hi"},
            )

            async def status() -> str:
                return (await api(http, server, "GET", f"/api/messages/{sent['id']}", tenant["headers"]))[
                    "status"
                ]

            await wait_for(lambda: _is_sent(status), timeout=30, interval=0.1, message="the message is sent")
        assert (work / "data" / "send-journal").is_dir()
        data = work / "data"
        assert {"gateway.sqlite3", "admin_token", "secret_key"} <= {p.name for p in data.iterdir()}
        assert any(p.name.endswith("-wal") for p in data.iterdir()), sorted(p.name for p in data.iterdir())
        assert loose(data) == []
        sessions = work / "sessions"
        assert any(sessions.iterdir())
        assert loose(sessions) == []
    finally:
        await server.terminate(15)
    assert loose(work / "data") == [] and loose(work / "sessions") == []


async def test_an_older_install_is_tightened_at_start(work):
    first = Server(fresh_env(work), work / "server.log", migrate=True)
    try:
        await first.start()
    finally:
        await first.terminate(15)
    data = work / "data"
    os.chmod(data, 0o755)  # as an older version left them
    os.chmod(data / "gateway.sqlite3", 0o644)
    os.chmod(data / "secret_key", 0o644)
    os.chmod(work / "sessions", 0o755)
    again = Server(fresh_env(work), work / "server.log")
    try:
        await again.start()
        assert loose(data) == [] and not (work / "sessions").stat().st_mode & 0o077
        assert "made 4 file(s)/folder(s) private (0600/0700)" in again.log_text()
    finally:
        await again.terminate(15)
