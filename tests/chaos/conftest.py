"""Fixtures of the security and chaos suite: the whole app behind a real HTTP server with the
supervisor on (real Node bridges, scripted driver) and the fake Graph API, and two tenants each
owning one object of every kind (tests/chaos/world.py). Every process a test starts is gone after
it (a bridge left under the test's sessions folder fails the test)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.app import create_app
from control_plane.supervisor.process import find_orphans, kill_process_groups
from tests.chaos.world import Owned, build_tenant
from tests.fakes.graph_api import FakeGraphAPI
from tests.realtime.conftest import NODE_DIR
from tests.supervisor.conftest import FAST

# Wrong keys by the hundred are the point here; the throttle has its own tests.
NO_THROTTLE = {"AUTH_FREE_FAILURES": "1000000"}


@dataclass
class Gateway:
    url: str
    app: Any
    fake: FakeGraphAPI
    http: aiohttp.ClientSession
    sessions_root: Path


@pytest.fixture
def short_sessions_root():
    """A short private SESSIONS_DIR (socket paths stay short); no process of the test survives it."""
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    yield root
    leftovers = find_orphans(root.resolve())
    kill_process_groups(leftovers, wait_s=1.0)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the test survived it: {leftovers}"


@pytest.fixture
def gateway_env() -> dict[str, str]:
    """Settings of the ``gateway`` on top of the defaults (a test module overrides this fixture)."""
    return {}


@pytest.fixture
async def gateway(aiohttp_server, make_settings, empty_db, short_sessions_root, gateway_env):
    async with FakeGraphAPI(enforce_window=False) as fake, aiohttp.ClientSession() as http:
        settings = make_settings(
            GRAPH_API_URL=fake.url,
            SESSIONS_DIR=str(short_sessions_root),
            MESSAGING_POLL_S="0.1",
            **{**FAST, **NO_THROTTLE, **gateway_env},
        )
        server = await aiohttp_server(create_app(settings))
        yield Gateway(f"http://127.0.0.1:{server.port}", server.app, fake, http, short_sessions_root)
        await server.close()


@pytest.fixture(scope="session")
def node_client_ready() -> None:
    """The npm socket.io-client of tests/realtime/node_client (scripts/test runs npm ci there)."""
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        pytest.fail(
            "node and tests/realtime/node_client/node_modules are needed (scripts/test installs them)"
        )


@pytest.fixture
async def two_tenants(gateway) -> tuple[Owned, Owned]:
    """A (with its sandbox session running) and B (no session), each owning one of everything."""
    a = await build_tenant(gateway.http, gateway.url, gateway.fake, "A")
    b = await build_tenant(gateway.http, gateway.url, gateway.fake, "B", session=False)
    return a, b
