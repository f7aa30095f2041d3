"""The pure parts: the state machine's transition table, backoff, the crash-loop breaker, the
heartbeat rule and the tenant-folder checks."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from control_plane.supervisor import paths, policy, states
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


def test_heartbeat_overdue_after_two_intervals():
    assert not policy.heartbeat_overdue(100.0, 5, 109.9)
    assert policy.heartbeat_overdue(100.0, 5, 110.1)


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
