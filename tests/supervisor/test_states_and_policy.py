"""The pure parts: the state machine's transition table, backoff, the crash-loop breaker, the
heartbeat rule and the tenant-folder checks."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from control_plane.supervisor import paths, policy, states
from control_plane.supervisor.bridge_run import BridgeRun, ShownQr
from control_plane.supervisor.mailbox import Mailbox
from control_plane.supervisor.states import InvalidTransition, SessionStateMachine
from control_plane.supervisor.states import SessionState as S


def test_states_module_imports_only_the_standard_library():
    tree = ast.parse(Path(states.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "datetime", "enum", "dataclasses"}


def test_every_state_has_a_row_in_the_table():
    assert set(states.TRANSITIONS) == set(S)
    assert {s.value for s in S} == {
        "stopped",
        "starting",
        "qr",
        "authenticated",
        "ready",
        "disconnected",
        "backoff",
        "failed",
        "stopping",
        "logged_out",
    }


@pytest.mark.parametrize(
    "path",
    [
        [S.STOPPED, S.STARTING, S.QR, S.AUTHENTICATED, S.READY],  # first link
        [S.STOPPED, S.STARTING, S.AUTHENTICATED, S.READY],  # saved session
        [S.READY, S.BACKOFF, S.STARTING],  # crash, then restart
        [S.READY, S.DISCONNECTED, S.BACKOFF, S.STARTING],
        [S.BACKOFF, S.FAILED, S.STARTING],  # someone asks again
        [S.QR, S.STOPPING, S.FAILED],  # qr_expired
        [S.READY, S.STOPPING, S.STOPPED],
        [S.READY, S.STOPPING, S.STARTING],  # restart
        [S.READY, S.STOPPING, S.LOGGED_OUT, S.STARTING],
        [S.BACKOFF, S.STOPPED],  # stop while waiting
    ],
)
def test_allowed_paths(path):
    machine = SessionStateMachine(path[0])
    for new in path[1:]:
        previous = machine.state
        transition = machine.change(new, "why")
        assert (transition.previous, transition.state, transition.reason) == (previous, new, "why")
    assert machine.state is path[-1]


@pytest.mark.parametrize(
    "current,new",
    [
        (S.STOPPED, S.READY),
        (S.STOPPED, S.BACKOFF),
        (S.FAILED, S.READY),
        (S.BACKOFF, S.READY),
        (S.STOPPED, S.STOPPED),
        (S.LOGGED_OUT, S.READY),
        (S.STOPPING, S.READY),
        (S.FAILED, S.BACKOFF),
    ],
)
def test_forbidden_transitions_raise_and_change_nothing(current, new):
    machine = SessionStateMachine(current, "before")
    with pytest.raises(InvalidTransition):
        machine.change(new)
    assert machine.state is current and machine.reason == "before"


def test_backoff_grows_to_the_cap_with_jitter_below_it():
    rand = random.Random(1)
    assert policy.backoff_delay(0, 1, 60) == 0
    for failures, full in [(1, 1), (2, 2), (3, 4), (7, 60), (50, 60)]:
        delays = [policy.backoff_delay(failures, 1, 60, rand=rand) for _ in range(200)]
        assert all(0.8 * full <= d <= full for d in delays)
        assert len({round(d, 6) for d in delays}) > 100  # spread, not one instant


def test_breaker_trips_within_the_window_only():
    breaker = policy.CrashLoopBreaker(max_failures=3, window_s=10)
    assert breaker.record(0) == 1 and breaker.record(5) == 2 and not breaker.tripped(5)
    assert breaker.record(11) == 2  # the first one left the window
    assert not breaker.tripped(11)
    breaker.record(12)
    assert breaker.tripped(12)
    breaker.reset()
    assert not breaker.tripped(12)


def test_breaker_reads_its_injected_clock():
    now = [0.0]
    breaker = policy.CrashLoopBreaker(max_failures=2, window_s=10, clock=lambda: now[0])
    assert breaker.record() == 1
    now[0] = 10.5
    assert breaker.record() == 1 and not breaker.tripped()  # the first one left the window
    now[0] = 11.0
    assert breaker.record() == 2 and breaker.tripped()
    now[0] = 21.0
    assert not breaker.tripped() and breaker.recent() == 1


def test_heartbeat_overdue_after_two_intervals():
    assert not policy.heartbeat_overdue(100.0, 5, 109.9)
    assert policy.heartbeat_overdue(100.0, 5, 110.1)


LIMITS = policy.WatchdogLimits(heartbeat_interval_s=5, start_timeout_s=15, qr_ttl_s=60, qr_max_cycles=3)
WALL_MS = 1_700_000_000_000


def _run(last_seen=100.0, *, qr_attempt=None, qr_expires_in_s=20.0, first_qr_at=None):
    run = BridgeRun("t", last_seen)
    if qr_attempt is not None:
        run.qr = ShownQr("2@x", qr_attempt, "-", WALL_MS + int(qr_expires_in_s * 1000))
        run.first_qr_at = 100.0 if first_qr_at is None else first_qr_at
    return run


@pytest.mark.parametrize(
    "state,run,elapsed,verdict",
    [
        (S.STARTING, _run(), 14.9, None),  # silent, but starting: judged by the start timeout
        (S.STARTING, _run(), 15.1, ("kill", "start_timeout")),
        (S.READY, _run(), 9.9, None),
        (S.READY, _run(), 10.1, ("kill", "heartbeat_timeout")),
        (S.QR, _run(qr_attempt=1), 9.0, None),
        (S.QR, _run(159.0, qr_attempt=1), 60.1, ("expire", "qr_expired")),  # QR_TTL_S since the first
        (S.QR, _run(109.0, qr_attempt=2, qr_expires_in_s=5), 5.1, None),  # more codes will come
        (S.QR, _run(109.0, qr_attempt=3, qr_expires_in_s=5), 5.1, ("expire", "qr_expired")),  # the last
        (S.QR, _run(100.0, qr_attempt=3, qr_expires_in_s=5), 10.1, ("kill", "heartbeat_timeout")),
    ],
)
def test_watchdog_verdicts_on_numbers(state, run, elapsed, verdict):
    now, wall_ms = 100.0 + elapsed, WALL_MS + elapsed * 1000
    assert run.verdict(state, LIMITS, now, wall_ms) == verdict
    deadline = run.deadline(state, LIMITS, now, wall_ms)
    assert (deadline <= now) == (verdict is not None)  # the deadline agrees with the verdict
    if verdict is None:  # ... and at the deadline, it acts
        later = deadline - now
        assert run.verdict(state, LIMITS, deadline, wall_ms + later * 1000) is not None


def test_shown_qr_expiry_is_the_one_timestamp_format():
    qr = ShownQr.from_event({"qr": "2@x", "attempt": "2", "expires_at": 1_700_000_000_123})
    assert qr.public() == {"qr": "2@x", "attempt": 2, "expires_at": "2023-11-14T22:13:20.123Z"}
    run = BridgeRun("t", 0.0)
    run.show_qr({"qr": "2@x", "attempt": 1, "expires_at": 5000}, now=7.0)
    run.show_qr({"qr": "2@y", "attempt": 2, "expires_at": 9000}, now=8.0)
    assert run.first_qr_at == 7.0 and run.qr_showing(8999) is run.qr and run.qr_showing(9000) is None


async def test_mailbox_keeps_the_strongest_request():
    box = Mailbox()
    box.put("kill", "memory_limit")
    box.put("stop", "requested")
    box.put("kill", "heartbeat_timeout")  # weaker: does not replace the stop
    assert box.wake.is_set()
    action = box.take()
    assert action is not None and (action.kind, action.reason) == ("stop", "requested")
    assert box.take() is None and not box.wake.is_set()
    assert action.outranks(None) and not action.outranks(action)


def test_process_tree_and_memory_of_this_process():
    import os

    children = policy.children_index(policy.ppid_map())
    tree = policy.process_tree([os.getppid()], children)
    assert os.getpid() in tree
    assert policy.pss_bytes([os.getpid()]) > 0
    assert policy.rss_bytes([os.getpid()]) >= policy.pss_bytes([os.getpid()]) * 0.5
    [verdict] = policy.check_memory({"t": [os.getpid()]}, limit_bytes=1)
    assert verdict.over and verdict.bytes > 0


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "../x",
        "/etc",
        "A" * 32,
        "a" * 31,
        "a" * 33,
        "a" * 32 + "\n",
        "a" * 31 + "/",
        None,
        123,
        "a" * 16 + "." * 16,
    ],
)
def test_invalid_tenant_ids_are_refused(tmp_path, bad):
    with pytest.raises(paths.InvalidTenantId):
        paths.tenant_dir(tmp_path, bad, create=True)
    assert list(tmp_path.iterdir()) == []


def test_tenant_dir_is_created_0700_and_removed(tmp_path):
    tid = "0123456789abcdef0123456789abcdef"
    folder = paths.tenant_dir(tmp_path / "s", tid, create=True)
    assert folder == (tmp_path / "s" / tid).resolve() and (folder.stat().st_mode & 0o777) == 0o700
    (folder / "scripted-auth.json").write_text("{}")
    paths.wipe_tenant_dir(tmp_path / "s", tid)
    assert sorted(p.name for p in folder.iterdir()) == ["tmp"]
    assert paths.remove_tenant_dir(tmp_path / "s", tid) and not folder.exists()
    assert not paths.remove_tenant_dir(tmp_path / "s", tid)


def test_symlinked_tenant_dir_is_refused_and_only_the_link_removed(tmp_path):
    tid = "0123456789abcdef0123456789abcdef"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    root = tmp_path / "s"
    root.mkdir()
    (root / tid).symlink_to(outside)
    with pytest.raises(paths.UnsafeSessionPath):
        paths.tenant_dir(root, tid, create=True)
    with pytest.raises(paths.UnsafeSessionPath):
        paths.wipe_tenant_dir(root, tid)
    assert paths.remove_tenant_dir(root, tid)
    assert (outside / "keep").exists() and not (root / tid).exists()
