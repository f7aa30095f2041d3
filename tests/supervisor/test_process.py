"""Process mechanics: group kill, the profile cleanup that frees a Chromium profile, the boot sweep."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from control_plane.supervisor import process

# Ignores SIGTERM, then says so by creating the file named in argv[1].
SLEEPER = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
)


def spawn_holder(profile: Path, *, ignore_term: bool = False) -> psutil.Popen:
    if ignore_term:
        ready = profile.parent / "stubborn-ready"
        proc = psutil.Popen(
            [sys.executable, "-c", SLEEPER, str(ready), f"--user-data-dir={profile}"], start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline, "the stubborn holder did not start"
            time.sleep(0.01)
        return proc
    return psutil.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--user-data-dir={profile}"],
        start_new_session=True,
    )


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def wait_gone(proc: psutil.Popen) -> None:
    try:
        proc.wait(5)
    except psutil.TimeoutExpired:
        proc.kill()
        raise


def test_cleanup_profile_kills_holders_then_removes_singletons(tmp_path):
    profile = tmp_path / "session-session"
    profile.mkdir()
    holder = spawn_holder(profile)
    stubborn = spawn_holder(profile, ignore_term=True)  # gets SIGKILL after the wait
    other = spawn_holder(tmp_path / "someone-else")
    (profile / "SingletonLock").symlink_to("otherhost-12345")  # dangling, as Chromium leaves it
    (profile / "SingletonSocket").symlink_to("/nonexistent/socket")
    (profile / "SingletonCookie").symlink_to("1234")
    try:
        wait_until(lambda: len(process.find_profile_holders([profile])) == 2)
        killed, removed = process.cleanup_profile_sync([profile])
        assert killed == 2
        assert sorted(removed) == ["SingletonCookie", "SingletonLock", "SingletonSocket"]
        wait_gone(holder)
        wait_gone(stubborn)
        assert stubborn.returncode == -signal.SIGKILL
        assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE  # exact match only
        assert not any(os.path.lexists(profile / n) for n in process.SINGLETON_FILES)
    finally:
        for p in (holder, stubborn, other):
            if p.returncode is None:
                p.kill()
                p.wait()


def test_find_orphans_matches_session_and_profile_dirs_under_root(tmp_path):
    root = tmp_path / "sessions"
    inside = spawn_holder(root / "a" / "session-session")
    bridge = psutil.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--session-dir", str(root / "b")],
        start_new_session=True,
    )
    outside = spawn_holder(tmp_path / "sessions-other" / "x")
    try:
        wait_until(lambda: {inside.pid, bridge.pid} <= set(process.find_orphans(root)))
        found = set(process.find_orphans(root))
        assert {inside.pid, bridge.pid} <= found and outside.pid not in found
        assert process.kill_process_groups(found, wait_s=2) == 2
        wait_gone(inside)
        wait_gone(bridge)
    finally:
        for p in (inside, bridge, outside):
            if p.returncode is None:
                p.kill()
                p.wait()


async def test_bridge_process_terminate_escalates_to_group_kill(tmp_path):
    # a parent that ignores SIGTERM and has a child in its group: terminate() must take both
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        'print(\'{"event":"hello","ts":1,"data":{}}\', flush=True); time.sleep(60)'
    )
    events = []
    proc = await process.BridgeProcess.spawn(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ),
        on_event=events.append,
        on_stderr=lambda line: None,
        log_context="",
    )
    for _ in range(200):
        if events:
            break
        await asyncio.sleep(0.01)
    assert events and events[0].name == "hello"
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pgid]
    assert len(group) == 2
    code = await proc.terminate(0.3)
    await proc.close()
    assert code == -signal.SIGKILL
    psutil.wait_procs(group, timeout=3)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in group)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_describe_exit():
    assert process.describe_exit(-9) == "signal_SIGKILL"
    assert process.describe_exit(3) == "exit_3"
    assert process.describe_exit(None) == "running"
