"""The real driver: whatsapp-web.js and Debian's Chromium, tested up to the network boundary.

There is no network here, so WhatsApp Web never loads. What must hold: the browser starts and its
pid is reported, failures are reported with a clear reason and a non-zero exit, and no Chromium
process or Singleton* lock of the profile outlives the bridge, whichever way the bridge ends.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from control_plane.bridge import protocol as p
from tests.support import unless_installed

REPO = Path(__file__).resolve().parents[2]
CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")

pytestmark = [
    unless_installed(CHROME, f"no Chromium at {CHROME}"),
    unless_installed(
        REPO / "bridge/node_modules/whatsapp-web.js",
        "bridge/node_modules missing: PUPPETEER_SKIP_DOWNLOAD=true npm ci in bridge/",
    ),
]

SINGLETONS = ("SingletonLock", "SingletonSocket", "SingletonCookie")


def singleton_files(profile: Path) -> list[str]:
    return [n for n in SINGLETONS if os.path.lexists(profile / n)]


async def assert_nothing_left(bridge, profile_processes, until) -> None:
    profile = bridge.session_dir / "session-session"
    await until(lambda: not profile_processes(profile), 5, f"no process using {profile}")
    await until(lambda: not singleton_files(profile), 2, "no Singleton* files")


async def started(spawn_bridge, proxy: str | None = None, **kw):
    env = {"https_proxy": proxy, "http_proxy": proxy} if proxy else None
    b = await spawn_bridge(driver="wwebjs", heartbeat_ms=1000, env=env, **kw)
    browser = await b.wait_event(p.EVENT_BROWSER, timeout_s=20)
    pid = browser.data["browser_pid"]
    assert pid and browser.data["user_data_dir"] == str(b.session_dir / "session-session")
    return b, pid


async def test_offline_start_fails_cleanly_with_a_reason(spawn_bridge, profile_processes, until):
    b, browser_pid = await started(spawn_bridge)
    error = await b.wait_event(p.EVENT_ERROR, timeout_s=20)
    assert error.data["fatal"] is True and error.data["code"] == p.FATAL_INIT_FAILED
    assert "ERR_" in error.data["message"] or "timeout" in error.data["message"]
    await b.wait_state(p.STATE_DISCONNECTED)
    assert await b.wait_exit() == p.EXIT_FATAL
    assert b.named(p.EVENT_HELLO)[0].data["wwebjs_version"].startswith("1.34.")
    assert not psutil.pid_exists(browser_pid) or psutil.Process(browser_pid).status() == psutil.STATUS_ZOMBIE
    await assert_nothing_left(b, profile_processes, until)
    assert not (REPO / ".wwebjs_cache").exists() and not (Path.cwd() / ".wwebjs_cache").exists()


async def test_sandbox_commands_refused_and_sigterm_is_clean(
    spawn_bridge, blackhole_proxy, profile_processes, until
):
    b, browser_pid = await started(spawn_bridge, blackhole_proxy)
    assert psutil.Process(browser_pid).is_running()
    assert (await b.conn.request(p.CMD_GET_STATE))["browser_pid"] == browser_pid
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SANDBOX_SCAN)
    assert err.value.code == p.ERR_NOT_SUPPORTED
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SEND, {"to": "15550001111", "text": "x"})
    assert err.value.code == p.ERR_NOT_READY
    b.signal(signal.SIGTERM)
    assert await b.wait_exit() == p.EXIT_CLEAN
    await assert_nothing_left(b, profile_processes, until)


async def test_kill_9_of_the_bridge_leaves_no_orphaned_browser(
    spawn_bridge, blackhole_proxy, profile_processes, until
):
    b, _browser_pid = await started(spawn_bridge, blackhole_proxy)
    assert profile_processes(b.session_dir / "session-session")
    os.killpg(b.pid, signal.SIGKILL)  # node's group only: Chromium has its own (puppeteer detaches it)
    assert await b.wait_exit() == -signal.SIGKILL
    await assert_nothing_left(b, profile_processes, until)


async def test_browser_gone_is_fatal(spawn_bridge, blackhole_proxy, profile_processes, until):
    b, browser_pid = await started(spawn_bridge, blackhole_proxy)
    os.killpg(browser_pid, signal.SIGKILL)
    error = await b.wait_event(p.EVENT_ERROR, timeout_s=10)
    assert error.data["code"] == p.FATAL_BROWSER_GONE
    assert await b.wait_exit() == p.EXIT_FATAL
    await assert_nothing_left(b, profile_processes, until)


async def test_stdin_closed_exits_3_and_frees_the_browser(
    spawn_bridge, blackhole_proxy, profile_processes, until
):
    b, _ = await started(spawn_bridge, blackhole_proxy)
    b.conn.close_writer()
    assert await b.wait_exit() == p.EXIT_STDIN_CLOSED
    await assert_nothing_left(b, profile_processes, until)


async def test_deep_session_dir_still_launches_chromium(
    spawn_bridge, sessions_root, profile_processes, until
):
    deep = sessions_root / ("d" * 60) / ("e" * 40) / "tenant"
    b, _ = await started(spawn_bridge, session_dir=deep)
    assert len(str(deep / "tmp")) > 64  # too long for Chromium's SingletonSocket path as is
    link = Path(b.named(p.EVENT_HELLO)[0].data["tmpdir"])
    assert link.name.startswith("wabridge-") and link.resolve() == (deep / "tmp").resolve()  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive
    assert await b.wait_exit(timeout_s=20) == p.EXIT_FATAL
    assert b.named(p.EVENT_ERROR)[0].data["code"] == p.FATAL_INIT_FAILED
    assert "Target closed" not in b.named(p.EVENT_ERROR)[0].data["message"]
    await assert_nothing_left(b, profile_processes, until)
    link.unlink()  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive
