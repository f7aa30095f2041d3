"""The supervisor with real Node bridges on the scripted driver."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from control_plane.db import sessions as sessions_db
from control_plane.supervisor import InvalidTenantId, SessionNotReady, UnsafeSessionPath
from control_plane.supervisor.process import find_orphans
from tests.supervisor.conftest import ready_session
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def row(db, tenant_id: str) -> dict:
    async with db.connect() as conn:
        return await sessions_db.get_session_state(conn, tenant_id)


@pytest.mark.smoke
async def test_qr_scan_ready(make_supervisor, new_tenant, db, sessions_root):
    sup, pub = await make_supervisor()
    tid = await new_tenant()
    await sup.start(tid)
    await pub.wait_state(tid, "qr")
    qr = sup.qr(tid)
    assert (
        qr is not None and qr["attempt"] == 1 and qr["qr"].startswith("2@") and qr["expires_at"].endswith("Z")
    )
    assert pub.of(tid, "session.qr")[0]["attempt"] == 1
    assert not sup.is_ready(tid)

    await sup.sandbox(tid, "scan", {})
    ready = await pub.wait_state(tid, "ready")
    assert ready["own_number"] and ready["previous"] == "authenticated"
    assert pub.states(tid)[:4] == ["starting", "qr", "authenticated", "ready"]
    assert sup.is_ready(tid) and sup.qr(tid) is None

    status = await sup.status(tid)
    assert (
        status["state"] == "ready" and status["desired_state"] == "running" and status["driver"] == "scripted"
    )
    assert status["pid"] == sup.pid(tid) and status["memory_bytes"] > 10 * 2**20 and status["uptime_s"] > 0
    persisted = await row(db, tid)
    assert persisted["state"] == "ready" and persisted["desired_state"] == "running"
    assert persisted["pid"] == status["pid"] and persisted["own_number"] == status["own_number"]

    folder = sessions_root / tid
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    proc = psutil.Process(status["pid"])
    assert Path(proc.cwd()) == folder.resolve()
    assert os.getpgid(proc.pid) == proc.pid  # its own process group
    assert proc.environ()["TMPDIR"] == str(folder.resolve() / "tmp")
    assert "SECRET_KEY" not in proc.environ() and "DATABASE_URL" not in proc.environ()


async def test_twenty_tenants_started_together_each_in_its_own_folder(
    make_supervisor, new_tenant, sessions_root
):
    sup, pub = await make_supervisor()
    tids = [await new_tenant(name=f"t{i}") for i in range(20)]
    await asyncio.gather(*(sup.start(t) for t in tids))
    await asyncio.gather(*(pub.wait_state(t, "qr", timeout=30) for t in tids))
    await asyncio.gather(*(sup.sandbox(t, "scan", {}) for t in tids))
    await asyncio.gather(*(pub.wait_state(t, "ready", timeout=30) for t in tids))

    pids = {t: sup.pid(t) for t in tids}
    assert len(set(pids.values())) == 20
    for t, pid in pids.items():
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        assert cmd[cmd.index("--session-dir") + 1] == str((sessions_root / t).resolve())
        assert Path(proc.cwd()) == (sessions_root / t).resolve()
        assert (sessions_root / t / "scripted-auth.json").exists()
    assert sorted(p.name for p in sessions_root.iterdir()) == sorted(tids)


async def test_kill9_back_to_ready_after_backoff(make_supervisor, new_tenant):
    sup, pub = await make_supervisor()
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    old = sup.pid(tid)
    n = len(pub.of(tid))
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    backoff = await pub.wait_state(tid, "backoff", after=n)
    assert backoff["reason"] == "signal_SIGKILL" and backoff["exit_code"] == -9
    assert 0 < backoff["retry_in_s"] <= 0.2
    await pub.wait_state(tid, "ready", after=n)  # the saved session comes back without a scan
    elapsed = time.monotonic() - killed_at
    assert elapsed >= backoff["retry_in_s"]
    assert sup.pid(tid) != old and gone(old)
    assert (await sup.status(tid))["restarts"] == 1
    assert pub.states(tid)[n:] == ["backoff", "starting", "authenticated", "ready"]


async def test_crash_loop_to_failed_and_stays_failed(make_supervisor, new_tenant, db, sessions_root):
    sup, pub = await make_supervisor(CRASH_LOOP_MAX="3")
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    for i in range(3):
        n = len(pub.of(tid))
        await sup.sandbox(tid, "crash", {"exit_code": 7})
        if i < 2:
            assert (await pub.wait_state(tid, "backoff", after=n))["reason"] == "exit_7"
            await pub.wait_state(tid, "ready", after=n)
    failed = await pub.wait_state(tid, "failed", reason="crash_loop")
    assert failed["cause"] == "exit_7"

    # and it stays failed: nothing starts again until someone asks
    n = len(pub.of(tid))
    with pytest.raises(AssertionError):
        await pub.wait_state(tid, "starting", after=n, timeout=1.5)
    assert sup.pid(tid) is None and find_orphans(sessions_root / tid) == []
    assert (await row(db, tid))["state"] == "failed"
    with pytest.raises(SessionNotReady):
        await sup.send(tid, {"to": "15550001111", "text": "hi"})

    await sup.start(tid)  # someone asks: it runs again
    await pub.wait_state(tid, "ready", after=n)


async def test_hung_bridge_killed_within_two_heartbeats_and_restarted(make_supervisor, new_tenant):
    sup, pub = await make_supervisor(HEARTBEAT_INTERVAL_S="0.3")
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    old = sup.pid(tid)
    n = len(pub.of(tid))
    await asyncio.sleep(3 * 0.3)
    assert sup._sessions[tid]._timer is None  # healthy: only the shared sweep looks at it, no timer
    await sup.sandbox(tid, "hang", {})
    last_beat = sup._sessions[tid].run_facts.last_seen  # the last thing the bridge said before it hung
    killed_at: list[float] = []
    await wait_for(
        lambda: gone(old) and not killed_at.append(time.monotonic()),
        timeout=5,
        interval=0.005,
        message="the hung bridge is killed",
    )
    silent = killed_at[0] - last_beat
    assert 2 * 0.3 <= silent < 2 * 0.3 + 0.2, silent  # killed once silent for two intervals, not before

    backoff = await pub.wait_state(tid, "backoff", after=n, timeout=5)
    assert backoff["reason"] == "heartbeat_timeout" and backoff["exit_code"] == -9
    await pub.wait_state(tid, "ready", after=n)
    assert gone(old) and sup.pid(tid) != old


async def test_leaking_bridge_restarted_with_memory_limit(make_supervisor, new_tenant):
    sup, pub = await make_supervisor(MEMORY_LIMIT_MB="150", MEMORY_CHECK_INTERVAL_S="0.1")
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    old = sup.pid(tid)
    n = len(pub.of(tid))
    result = await sup.sandbox(tid, "leak", {"mb": 200})
    assert result["held_bytes"] >= 200 * 2**20
    backoff = await pub.wait_state(tid, "backoff", after=n, timeout=10)
    assert backoff["reason"] == "memory_limit"
    await pub.wait_state(tid, "ready", after=n)
    assert gone(old)
    status = await sup.status(tid)
    assert status["memory_bytes"] < 150 * 2**20 and status["restarts"] == 1


@pytest.mark.smoke
async def test_stop_leaves_no_process_of_the_tenant(make_supervisor, new_tenant, db, sessions_root):
    sup, pub = await make_supervisor()
    tid, other = await new_tenant(), await new_tenant()
    await ready_session(sup, pub, tid)
    await ready_session(sup, pub, other)
    pid = sup.pid(tid)

    status = await sup.stop(tid)  # answers at once; the runner stops the bridge
    assert status["desired_state"] == "stopped"
    await pub.wait_state(tid, "stopped")
    status = await sup.status(tid)
    assert status["state"] == "stopped" and status["pid"] is None
    assert gone(pid)
    assert find_orphans((sessions_root / tid).resolve()) == []
    persisted = await row(db, tid)
    assert (
        persisted["desired_state"] == "stopped"
        and persisted["state"] == "stopped"
        and persisted["pid"] is None
    )
    assert pub.states(tid)[-2:] == ["stopping", "stopped"]
    assert sup.is_ready(other)  # the neighbour is untouched
    assert set(sup._watched) == {other}  # the watchdog sweep only looks at live bridges
    with pytest.raises(SessionNotReady):
        await sup.sandbox(tid, "scan", {})


@pytest.mark.smoke
async def test_control_plane_restart_brings_back_exactly_the_desired_sessions(
    make_supervisor, new_tenant, db, sessions_root, sup_settings
):
    sup1, pub1 = await make_supervisor()
    running, stopped, never = await new_tenant(), await new_tenant(), await new_tenant()
    await ready_session(sup1, pub1, running)
    await ready_session(sup1, pub1, stopped)
    await sup1.stop(stopped)
    await pub1.wait_state(stopped, "stopped")
    number = (await sup1.status(running))["own_number"]
    await sup1.close()  # shutdown keeps desired states
    assert (await row(db, running))["desired_state"] == "running"
    assert (await row(db, running))["state"] == "stopped"

    # an orphan of the "previous run" still holding a tenant folder: the boot sweep must kill it
    settings = sup_settings()
    orphan_dir = (sessions_root / stopped).resolve()
    orphan = await asyncio.create_subprocess_exec(
        settings.node_path,
        str(settings.bridge_script),
        "--tenant",
        stopped,
        "--session-dir",
        str(orphan_dir),
        "--driver",
        "scripted",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await wait_for(lambda: find_orphans(orphan_dir) != [], timeout=5, message="orphan running")
        sup2, pub2 = await make_supervisor(settings)
        assert await asyncio.wait_for(orphan.wait(), 5) is not None
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()
    await sup2.boot_done.wait()
    await pub2.wait_state(running, "ready")
    assert (await sup2.status(running))["own_number"] == number
    assert pub2.states(running) == ["starting", "authenticated", "ready"]  # no QR: the session was kept
    assert pub2.of(stopped) == [] and pub2.of(never) == []
    assert sup2.pid(stopped) is None and sup2.pid(never) is None
    assert (await sup2.status(stopped))["state"] == "stopped"


@pytest.mark.parametrize(
    "overrides",
    [
        {"QR_INTERVAL_S": "0.2", "QR_MAX_CYCLES": "3", "QR_TTL_S": "60"},  # cycles run out
        {"QR_INTERVAL_S": "5", "QR_MAX_CYCLES": "100", "QR_TTL_S": "0.6"},  # time runs out
    ],
    ids=["max_cycles", "ttl"],
)
async def test_qr_never_scanned_ends_failed_qr_expired(make_supervisor, new_tenant, sessions_root, overrides):
    sup, pub = await make_supervisor(**overrides)
    tid = await new_tenant()
    await sup.start(tid)
    await pub.wait_state(tid, "qr")
    pid = sup.pid(tid)
    failed = await pub.wait_state(tid, "failed", timeout=10)
    assert failed["reason"] == "qr_expired"
    assert pub.states(tid) == ["starting", "qr", "stopping", "failed"]
    attempts = [q["attempt"] for q in pub.of(tid, "session.qr")]
    assert attempts == list(range(1, len(attempts) + 1))
    if overrides["QR_MAX_CYCLES"] == "3":
        assert attempts == [1, 2, 3]
    assert sup.qr(tid) is None and sup.pid(tid) is None and gone(pid)
    assert find_orphans((sessions_root / tid).resolve()) == []
    n = len(pub.of(tid))
    with pytest.raises(AssertionError):  # stays failed
        await pub.wait_state(tid, "starting", after=n, timeout=1.0)


async def test_malicious_tenant_ids_cannot_touch_folders_outside(
    make_supervisor, new_tenant, sessions_root, tmp_path
):
    sup, _ = await make_supervisor()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    for bad in [
        "../" + outside.name,
        "..",
        str(outside),
        "/etc",
        "A" * 32,
        "0" * 31,
        "0" * 33,
        "0" * 32 + "/..",
        "0" * 32 + "\n",
        "../" + "0" * 29,
        "%2e%2e",
        "",
    ]:
        for call in (sup.start, sup.stop, sup.restart, sup.logout, sup.forget, sup.status):
            with pytest.raises(InvalidTenantId):
                await call(bad)
    # a planted symlink SESSIONS_DIR/<valid id> -> outside is refused, and forget drops only the link
    tid = await new_tenant()
    (sessions_root / tid).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeSessionPath):
        await sup.start(tid)
    with pytest.raises(UnsafeSessionPath):
        await sup.logout(tid)
    await sup.forget(tid)
    assert not (sessions_root / tid).exists() and (outside / "precious").read_text() == "keep me"
    assert sup.pid(tid) is None


async def test_logout_wipes_the_profile_and_needs_a_new_scan(make_supervisor, new_tenant, db, sessions_root):
    sup, pub = await make_supervisor()
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    assert (sessions_root / tid / "scripted-auth.json").exists()
    status = await sup.logout(tid)
    assert (
        status["state"] == "logged_out"
        and status["desired_state"] == "stopped"
        and status["own_number"] is None
    )
    assert not (sessions_root / tid / "scripted-auth.json").exists()
    assert find_orphans((sessions_root / tid).resolve()) == []
    n = len(pub.of(tid))
    await sup.start(tid)
    await pub.wait_state(tid, "qr", after=n)  # a fresh QR, not the old session


async def test_restart_send_and_message_listener(make_supervisor, new_tenant):
    sup, pub = await make_supervisor()
    received: list[tuple[str, str, dict]] = []

    async def listener(tenant_id, name, data):
        received.append((tenant_id, name, data))

    tid = await new_tenant()
    with pytest.raises(SessionNotReady):
        await sup.send(tid, {"to": "15550001111", "text": "hi"})
    await ready_session(sup, pub, tid)

    sent = await sup.send(tid, {"to": "15550001111", "text": "hello"})
    assert sent["id"].startswith("true_15550001111@c.us_")
    await sup.mark_read(tid, "15550001111@c.us")
    incoming = await sup.sandbox(tid, "incoming", {"from": "15550002222", "text": "hey"})
    sup.add_message_listener(listener)  # late: what came before is kept for it
    await wait_for(
        lambda: {n for _, n, _ in received} >= {"message", "message_ack"},
        timeout=5,
        message="message and ack delivered to the listener",
    )
    msg = next(d for _, n, d in received if n == "message")
    assert msg["id"] == incoming["id"] and msg["body"] == "hey" and received[0][0] == tid

    old = sup.pid(tid)
    n = len(pub.of(tid))
    await sup.restart(tid)
    await pub.wait_state(tid, "ready", after=n)
    assert sup.pid(tid) != old and gone(old)
    assert pub.states(tid)[n:] == ["stopping", "starting", "authenticated", "ready"]


async def test_disconnect_and_phone_logout(make_supervisor, new_tenant, sessions_root):
    sup, pub = await make_supervisor()
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    n = len(pub.of(tid))
    await sup.sandbox(tid, "disconnect", {"reason": "CONFLICT"})
    backoff = await pub.wait_state(tid, "backoff", after=n)
    assert backoff["reason"] == "disconnected" and backoff["exit_code"] == 4
    assert "disconnected" in pub.states(tid)[n:]
    await pub.wait_state(tid, "ready", after=n)

    n = len(pub.of(tid))
    await sup.sandbox(tid, "logout", {})  # the phone unlinks the device
    await pub.wait_state(tid, "logged_out", reason="phone_logout", after=n)
    await pub.wait_state(tid, "qr", after=n)  # straight to a new QR
    assert not (sessions_root / tid / "scripted-auth.json").exists()


async def test_forget_stops_and_removes_the_folder(make_supervisor, new_tenant, sessions_root):
    sup, pub = await make_supervisor()
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    pid = sup.pid(tid)
    await sup.forget(tid)
    assert gone(pid) and not (sessions_root / tid).exists()
    assert find_orphans(sessions_root.resolve()) == []
    assert sup.state(tid) is None


async def test_shutdown_stops_all_bridges_in_parallel(make_supervisor, new_tenant, sessions_root):
    sup, pub = await make_supervisor()
    tids = [await new_tenant() for _ in range(5)]
    for t in tids:
        await ready_session(sup, pub, t)
    await sup.sandbox(tids[0], "hang", {})  # one that will not answer SIGTERM quickly
    started = time.monotonic()
    await sup.close()
    assert time.monotonic() - started < 3 + 3  # stop_wait_s + margin, not 5 x stop_wait_s
    assert find_orphans(sessions_root.resolve()) == []
    with pytest.raises(Exception) as info:
        await sup.start(tids[1])
    assert getattr(info.value, "code", "") == "supervisor_closed"


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the supervisor needs Linux (/proc, pidfd)", allow_module_level=True)
