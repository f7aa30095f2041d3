"""Fixtures for supervisor tests: real Node bridges under a short private SESSIONS_DIR, a Supervisor
over the test database with a recording event publisher, and a check that no bridge or browser of
the test survives it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from control_plane.config import Settings
from control_plane.db import Database
from control_plane.db import tenants as tenants_db
from control_plane.supervisor import Supervisor
from control_plane.supervisor.process import find_orphans, kill_process_groups

# Small numbers so the whole directory runs in well under three minutes.
FAST = {
    "HEARTBEAT_INTERVAL_S": "0.3",
    "BACKOFF_BASE_S": "0.2",
    "BACKOFF_CAP_S": "1",
    "CRASH_LOOP_MAX": "3",
    "CRASH_LOOP_WINDOW_S": "30",
    "QR_INTERVAL_S": "5",
    "QR_TTL_S": "30",
    "QR_MAX_CYCLES": "5",
    "STOP_WAIT_S": "3",
    "MEMORY_CHECK_INTERVAL_S": "0.2",
    "BOOT_STAGGER_S": "0.01",
}


class RecordingPublisher:
    """Stands in for app["events"]: records every publish and lets tests wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    async def publish(self, tenant_id: str, type: str, data: dict[str, Any]) -> dict[str, Any]:
        self.events.append((tenant_id, type, data))
        self._changed.set()
        return {"seq": len(self.events), "tenant_id": tenant_id, "type": type, "data": data}

    def of(self, tenant_id: str, type: str = "session.state") -> list[dict[str, Any]]:
        return [d for t, ty, d in self.events if t == tenant_id and ty == type]

    def states(self, tenant_id: str) -> list[str]:
        return [d["state"] for d in self.of(tenant_id)]

    async def wait(
        self,
        tenant_id: str,
        pred: Callable[[dict[str, Any]], bool],
        *,
        type: str = "session.state",
        timeout: float = 10.0,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first event (index >= after among this tenant's events of ``type``) matching ``pred``."""
        deadline = time.monotonic() + timeout
        while True:
            for data in self.of(tenant_id, type)[after:]:
                if pred(data):
                    return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no matching {type} for {tenant_id} within {timeout}s; "
                    f"got {[(d.get('state'), d.get('reason')) for d in self.of(tenant_id, type)]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_state(
        self,
        tenant_id: str,
        state: str,
        *,
        reason: str | None = None,
        timeout: float = 10.0,
        after: int = 0,
    ) -> dict[str, Any]:
        return await self.wait(
            tenant_id,
            lambda d: d["state"] == state and (reason is None or d["reason"] == reason),
            timeout=timeout,
            after=after,
        )


@pytest.fixture
def sessions_root() -> Any:
    """A short private SESSIONS_DIR (Chromium's socket paths must stay short; not tmp_path)."""
    root = Path(tempfile.mkdtemp(prefix="sup-"))
    yield root
    leftovers = find_orphans(root.resolve())
    kill_process_groups(leftovers, wait_s=1.0)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the test survived it: {leftovers}"


@pytest.fixture
def sup_settings(make_settings, sessions_root) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(**{"SESSIONS_DIR": str(sessions_root), **FAST, **overrides})

    return make


@pytest.fixture
async def db(database_url, empty_db) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


@pytest.fixture
def new_tenant(db) -> Callable[..., Awaitable[str]]:
    async def make(*, sandbox: bool = True, name: str = "t") -> str:
        async with db.begin() as conn:
            tenant = await tenants_db.create_tenant(conn, name, sandbox=sandbox)
        return tenant["id"]

    return make


@pytest.fixture
async def make_supervisor(
    db, sup_settings
) -> AsyncIterator[Callable[..., Awaitable[tuple[Supervisor, RecordingPublisher]]]]:
    made: list[Supervisor] = []

    async def make(
        settings: Settings | None = None, **overrides: Any
    ) -> tuple[Supervisor, RecordingPublisher]:
        publisher = RecordingPublisher()
        sup = Supervisor(settings or sup_settings(**overrides), db, events=publisher)
        await sup.startup()
        made.append(sup)
        return sup, publisher

    yield make
    for sup in made:
        await sup.close()


async def ready_session(
    sup: Supervisor,
    pub: RecordingPublisher,
    tenant_id: str,
    *,
    timeout: float = 10.0,
) -> None:
    """Start a fresh sandbox session, scan its QR, wait for ready."""
    await sup.start(tenant_id)
    await pub.wait_state(tenant_id, "qr", timeout=timeout)
    await sup.sandbox(tenant_id, "scan", {})
    await pub.wait_state(tenant_id, "ready", timeout=timeout)
