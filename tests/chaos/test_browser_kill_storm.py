"""Kill storm with the real driver (whatsapp-web.js + Debian's Chromium), up to the network boundary:
a blackhole proxy holds WhatsApp's page load, so each bridge keeps its browser up. Its bridge, its
browser, or the browser's whole process group is killed with SIGKILL, in turn: each time the
session comes back (a new bridge and a new browser), nothing of the killed generation survives
(no orphaned Chromium), and after the stop nothing of the tenant is left (no process, no profile
lock). The scripted-driver storm with many tenants is test_bridge_kill_storm.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from control_plane.supervisor.process import find_orphans
from tests.chaos.world import ADMIN
from tests.supervisor.test_supervisor_wwebjs import CHROME, REAL, leftovers
from tests.support import unless_installed, wait_for

REPO = Path(__file__).resolve().parents[2]
KILLS = 6
WAYS = ("bridge", "browser", "browser_group")
pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.timeout(240),
    unless_installed(CHROME, f"no Chromium at {CHROME}"),
    unless_installed(REPO / "bridge/node_modules/whatsapp-web.js", "bridge/node_modules missing"),
]


@pytest.fixture
async def blackhole(monkeypatch) -> AsyncIterator[str]:
    """An HTTP proxy that accepts and never answers, in the environment the bridges inherit."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    monkeypatch.setenv("https_proxy", url)
    monkeypatch.setenv("http_proxy", url)
    yield url
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


@pytest.fixture
def gateway_env(blackhole) -> dict[str, str]:
    return {**REAL, "CRASH_LOOP_MAX": "100000", "BACKOFF_CAP_S": "1"}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def test_killing_bridges_and_browsers_leaves_no_orphaned_browser(gateway, figures):
    sup = gateway.app["supervisor"]
    async with gateway.http.post(gateway.url + "/api/tenants", json={"name": "real"}, headers=ADMIN) as resp:
        tid = (await resp.json())["id"]
    folder = (gateway.sessions_root / tid).resolve()
    async with gateway.http.post(f"{gateway.url}/api/tenants/{tid}/session/start", headers=ADMIN) as resp:
        assert resp.status == 202, await resp.text()

    def up(old_bridge: int | None = None) -> bool:
        bridge, browser = sup.pid(tid), sup.browser_pid(tid)
        return bridge not in (None, old_bridge) and browser is not None and _alive(browser)

    await wait_for(up, timeout=60, message="the bridge and its browser")
    recovery_s: list[float] = []
    generations: list[tuple[int, int | None]] = []  # (bridge, browser group) of killed generations
    for n in range(KILLS):
        way = WAYS[n % len(WAYS)]
        bridge, browser = sup.pid(tid), sup.browser_pid(tid)
        assert bridge is not None and browser is not None
        generations.append((bridge, _group(browser)))
        killed_at = time.monotonic()
        if way == "bridge":
            os.kill(bridge, signal.SIGKILL)
        elif way == "browser":
            os.kill(browser, signal.SIGKILL)
        else:
            os.killpg(os.getpgid(browser), signal.SIGKILL)
        await wait_for(lambda b=bridge: up(b), timeout=60, message=f"back after killing the {way}")
        recovery_s.append(time.monotonic() - killed_at)

    # nothing of a killed generation survives: every process under the folder is the live one's
    def only_live() -> bool:
        live = {_group(sup.pid(tid) or 0), _group(sup.browser_pid(tid) or 0)}
        return all(_group(p) in live for p in find_orphans(folder)) and not any(
            _alive(b) for b, _ in generations
        )

    with contextlib.suppress(AssertionError):  # the figures first, then the verdict
        await wait_for(only_live, timeout=20, interval=0.1, message="only the live generation")
    live = {_group(sup.pid(tid) or 0), _group(sup.browser_pid(tid) or 0)}
    orphans = [p for p in find_orphans(folder) if _group(p) not in live]
    async with gateway.http.post(f"{gateway.url}/api/tenants/{tid}/session/stop", headers=ADMIN) as resp:
        assert resp.status == 202
    await wait_for(lambda: sup.pid(tid) is None, timeout=30, message="stopped")
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: leftovers(folder) == ([], []), timeout=15, message="nothing left")
    left, locks = leftovers(folder)
    figures(
        "bridge and browser kill storm (real driver)",
        kills=KILLS,
        ways="/".join(WAYS),
        recovery_p50_s=round(sorted(recovery_s)[len(recovery_s) // 2], 2),
        recovery_max_s=round(max(recovery_s), 2),
        orphans=len(orphans),
        left_after_stop=len(left),
        profile_locks_after_stop=len(locks),
    )
    assert orphans == [] and left == [] and locks == []
