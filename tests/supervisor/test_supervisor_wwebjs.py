"""The supervisor with the real driver (whatsapp-web.js + Debian's Chromium), up to the network
boundary: no WhatsApp here, so the bridge must fail cleanly, the supervisor back off, and nothing of
the tenant (node, Chromium, Singleton* locks) may outlive a stop or a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from control_plane.supervisor.process import SINGLETON_FILES, find_orphans, find_profile_holders
from tests.support import unless_installed, wait_for

REPO = Path(__file__).resolve().parents[2]
CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.timeout(90),
    unless_installed(CHROME, f"no Chromium at {CHROME}"),
    unless_installed(
        REPO / "bridge/node_modules/whatsapp-web.js",
        "bridge/node_modules missing: PUPPETEER_SKIP_DOWNLOAD=true npm ci in bridge/",
    ),
]

REAL = {
    "BRIDGE_DRIVER": "wwebjs",
    "CHROME_PATH": CHROME,
    "HEARTBEAT_INTERVAL_S": "1",
    "BACKOFF_BASE_S": "0.5",
    "CRASH_LOOP_MAX": "20",
    "STOP_WAIT_S": "5",
}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(folder: Path) -> tuple[list[int], list[str]]:
    """(processes of the tenant: bridge or browser, Singleton* files of its profile)."""
    profile = folder / "session-session"
    procs = sorted(set(find_orphans(folder)) | set(find_profile_holders([profile])))
    return procs, [n for n in SINGLETON_FILES if os.path.lexists(profile / n)]


@pytest.fixture
async def blackhole_proxy() -> AsyncIterator[str]:
    """An HTTP proxy that accepts connections and never answers: the page load hangs, so the bridge
    keeps its browser up as long as the test needs (Chromium takes https_proxy from the environment)."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


async def test_offline_real_driver_fails_clearly_backs_off_and_stop_leaves_nothing(
    make_supervisor, new_tenant, sessions_root, monkeypatch
):
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    sup, pub = await make_supervisor(**REAL)
    tid = await new_tenant(sandbox=False)
    folder = (sessions_root / tid).resolve()
    await sup.start(tid)

    backoff = await pub.wait_state(tid, "backoff", timeout=30)
    assert backoff["reason"] == "init_failed" and backoff["exit_code"] == 1  # a clear reason, non-zero exit
    assert (folder / "session-session").is_dir()  # the browser did start, with its profile in the folder
    assert (await sup.status(tid))["driver"] == "wwebjs"
    await pub.wait_state(tid, "starting", after=pub.states(tid).index("backoff"))  # and it tries again

    n = len(pub.of(tid))
    assert (await sup.stop(tid))["desired_state"] == "stopped"
    await pub.wait_state(tid, "stopped", after=n, timeout=15)
    status = await sup.status(tid)
    assert status["state"] == "stopped" and status["pid"] is None
    procs, locks = leftovers(folder)
    assert procs == [] and locks == []
    assert not (REPO / ".wwebjs_cache").exists() and not (folder / ".wwebjs_cache").exists()


async def test_kill9_of_a_real_bridge_leaves_no_orphaned_browser(
    make_supervisor, new_tenant, sessions_root, blackhole_proxy, monkeypatch
):
    monkeypatch.setenv("https_proxy", blackhole_proxy)
    monkeypatch.setenv("http_proxy", blackhole_proxy)
    sup, pub = await make_supervisor(**REAL)
    tid = await new_tenant(sandbox=False)
    folder = (sessions_root / tid).resolve()
    await sup.start(tid)
    await wait_for(lambda: sup.browser_pid(tid) is not None, timeout=30, message="the browser is up")
    bridge, browser = sup.pid(tid), sup.browser_pid(tid)
    assert alive(browser) and os.getpgid(browser) != os.getpgid(bridge)  # Chromium has its own group
    status = await sup.status(tid)
    assert status["memory_bytes"] > psutil.Process(bridge).memory_full_info().pss  # the browser counts too

    n = len(pub.of(tid))
    os.kill(bridge, signal.SIGKILL)
    backoff = await pub.wait_state(tid, "backoff", after=n, timeout=15)
    assert backoff["reason"] == "signal_SIGKILL"
    await wait_for(lambda: not alive(browser), timeout=5, message="the orphaned browser is gone")
    assert find_profile_holders([folder / "session-session"]) == [] or sup.pid(tid) is not None

    # the next bridge starts a new browser on the same profile (no "already running" lock)
    await wait_for(lambda: sup.browser_pid(tid) not in (None, browser), timeout=30, message="a new browser")
    n = len(pub.of(tid))
    await sup.stop(tid)
    await pub.wait_state(tid, "stopped", after=n, timeout=15)
    procs, locks = leftovers(folder)
    assert procs == [] and locks == []
