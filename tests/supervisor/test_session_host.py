"""A TenantSession against a minimal fake host (host.SessionHost): the seam between a session and
its supervisor is narrow enough to stand in for. Time is a fake clock the tests move: the
watchdog's deadlines and the crash-loop window are judged without a sleep.

The "bridges" here are tiny Python children speaking the JSON-lines protocol (or just exiting), so
the runner's spawn / supervise / classify path runs for real, without Node, a database or a
Supervisor.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control_plane.bridge.protocol import BridgeEvent
from control_plane.supervisor.host import SessionHost, SessionSettings
from control_plane.supervisor.session import TenantSession
from control_plane.supervisor.states import SessionState as S

pytestmark = pytest.mark.timeout(30)

TID = "0123456789abcdef0123456789abcdef"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # events.format_ts: ms + Z
WALL0 = 1_700_000_000.0


@dataclass(frozen=True)
class FakeSettings:
    sessions_dir: Path
    bridge_driver: str | None = None
    chrome_path: str = "/nonexistent/chromium"
    stop_wait_s: float = 2.0
    heartbeat_interval_s: float = 5.0
    backoff_base_s: float = 0.001  # the real wait between restarts: next to nothing
    backoff_cap_s: float = 0.002
    crash_loop_max: int = 3
    crash_loop_window_s: float = 60.0
    qr_ttl_s: float = 60.0
    qr_max_cycles: int = 3


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeHost:
    """Implements SessionHost and nothing else; records what the session hands back."""

    settings: FakeSettings
    argv: list[str] = field(default_factory=list)
    closing: bool = False
    states: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    watched: set[str] = field(default_factory=set)
    spawns: int = 0
    on_spawn: Any = None  # called before each spawn (tests move the clock there)

    def bridge_argv(self, tenant_id: str, folder: Path, driver: str) -> list[str]:
        self.spawns += 1
        if self.on_spawn is not None:
            self.on_spawn()
        return self.argv

    def record_state(self, tenant_id: str, snapshot: dict[str, Any], event: dict[str, Any] | None) -> None:
        assert tenant_id == TID
        self.snapshots.append(snapshot)
        if event is not None:
            self.states.append(event)

    def publish(self, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
        self.published.append((type_, data))

    def dispatch_message(self, tenant_id: str, name: str, data: dict[str, Any]) -> None:
        self.messages.append((name, data))

    def watch(self, session: TenantSession) -> None:
        self.watched.add(session.tenant_id)

    def unwatch(self, session: TenantSession) -> None:
        self.watched.discard(session.tenant_id)


def _typed(host: FakeHost) -> SessionHost:
    """The fake is a SessionHost as far as mypy is concerned (checked statically on this line)."""
    settings: SessionSettings = host.settings
    assert settings is host.settings
    return host


def python_bridge(script: str) -> list[str]:
    return [sys.executable, "-c", script]


EXITS_AT_ONCE = python_bridge("import sys; sys.exit(3)")
SAYS_QR_THEN_WAITS = python_bridge(
    "import json, sys\n"
    "def say(event, data):\n"
    "    print(json.dumps({'event': event, 'ts': 1, 'data': data}), flush=True)\n"
    "say('hello', {})\n"
    "say('state', {'state': 'qr'})\n"
    "say('qr', {'qr': '2@abc', 'attempt': 1, 'expires_at': int(sys.argv[1])})\n"
    "say('message', {'id': 'm1'})\n"
    "sys.stdin.read()\n"  # until the session closes our stdin or signals us
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL0)


@pytest.fixture
def make_session(tmp_path, clock, wall):
    def make(*, desired_running: bool = True, row: dict[str, Any] | None = None, **settings: Any):
        host = FakeHost(FakeSettings(sessions_dir=tmp_path / "s", **settings))
        session = TenantSession(
            _typed(host),
            TID,
            sandbox=True,
            desired_running=desired_running,
            row=row,
            clock=clock,
            wall_clock=wall,
        )
        return host, session

    return make


async def test_crash_loop_trips_within_the_window_of_the_injected_clock(make_session):
    host, session = make_session(crash_loop_max=3)
    host.argv = EXITS_AT_ONCE
    await asyncio.wait_for(session.run(), 10)  # the clock never moves: three crashes in no time
    assert host.spawns == 3
    assert [s["state"] for s in host.states] == [
        "starting",
        "backoff",
        "starting",
        "backoff",
        "starting",
        "failed",
    ]
    backoff = host.states[1]
    assert (backoff["reason"], backoff["exit_code"]) == ("exit_3", 3)
    assert (backoff["failures_in_window"], backoff["attempts_left"]) == (1, 2)
    assert host.states[-1]["reason"] == "crash_loop" and session.restarts == 2
    assert all(TS.match(s["since"]) for s in host.states)
    assert session.last_exit_code == 3 and not host.watched and session.proc is None


async def test_crashes_spread_beyond_the_window_never_trip_the_breaker(make_session, clock):
    host, session = make_session(crash_loop_max=3, crash_loop_window_s=60)
    host.argv = EXITS_AT_ONCE

    def later() -> None:
        clock.advance(61)  # each crash is alone in its window
        if host.spawns > 6:
            session.desired_running = False  # as Supervisor.stop does before it asks
            session.request("stop", "enough")

    host.on_spawn = later
    await asyncio.wait_for(session.run(), 10)
    states = [s["state"] for s in host.states]
    assert "failed" not in states and states[-1] == "stopped" and host.states[-1]["reason"] == "enough"
    assert all(s["failures_in_window"] == 1 for s in host.states if s["state"] == "backoff")
    assert session.restarts == 6


async def test_stopping_to_starting_when_a_start_came_during_the_stop(make_session, wall):
    """Commands do not wait for the runner: stop, then start (desired running again) before the
    bridge is gone -> the runner finishes the stop, then starts a new bridge instead of ending."""
    host, session = make_session()
    host.argv = [*SAYS_QR_THEN_WAITS, str(int((WALL0 + 20) * 1000))]
    runner = asyncio.create_task(session.run())

    async def until(pred: Any, what: str) -> None:
        for _ in range(1000):
            if pred():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never {what}: {[s['state'] for s in host.states]}")

    await until(lambda: session.state is S.QR, "qr")
    first = session.proc
    session.desired_running = False  # Supervisor.stop
    session.request("stop", "requested")
    session.desired_running = True  # Supervisor.start, before the runner has acted
    await until(lambda: session.state is S.QR and session.proc not in (None, first), "a new bridge")
    assert not runner.done() and host.spawns == 2
    session.desired_running = False
    session.request("stop", "requested")
    await asyncio.wait_for(runner, 10)
    states = [s["state"] for s in host.states]
    assert states == ["starting", "qr", "stopping", "stopped", "starting", "qr", "stopping", "stopped"]


async def test_qr_message_and_stop_through_the_host(make_session, wall):
    host, session = make_session()
    expires_ms = int((WALL0 + 20) * 1000)
    host.argv = [*SAYS_QR_THEN_WAITS, str(expires_ms)]
    runner = asyncio.create_task(session.run())
    for _ in range(500):
        if host.messages:
            break
        await asyncio.sleep(0.01)
    assert session.state is S.QR and host.watched == {TID}
    assert host.messages == [("message", {"id": "m1"})]
    [(type_, qr)] = host.published
    assert type_ == "session.qr" and qr == {
        "qr": "2@abc",
        "attempt": 1,
        "expires_at": "2023-11-14T22:13:40.000Z",
    }
    assert session.qr() == qr
    wall.advance(21)  # past the code's expiry on the injected wall clock
    assert session.qr() is None
    assert host.snapshots[1]["pid"] == session.proc.pid  # the pid is persisted after the spawn
    session.desired_running = False  # as Supervisor.stop does before it asks
    session.request("stop", "requested")
    await asyncio.wait_for(runner, 10)
    assert [s["state"] for s in host.states] == ["starting", "qr", "stopping", "stopped"]
    assert not host.watched and session.proc is None and host.snapshots[-1]["pid"] is None


class FakeProc:
    """Just enough of a BridgeProcess for the watchdog: a live child."""

    pid = 4242
    exited = False


def live_in(session: TenantSession, *path: S) -> None:
    """Walks the session's state machine along ``path`` with a (fake) live child."""
    for state in path:
        session.machine.change(state)
    session.proc = FakeProc()  # type: ignore[assignment]  # the watchdog reads pid/exited only


def sweep(session: TenantSession, clock: FakeClock, wall: FakeClock, period: float = 0.5) -> str | None:
    """One watchdog sweep at the clocks' time; what the session was asked to do."""
    session.sweep(clock(), wall() * 1000, clock() + period)
    if session._timer is not None:  # a deadline before the next sweep: timed, not acted on yet
        session._timer.cancel()
        session._timer = None
    pending = session._mailbox.take()
    return f"{pending.kind}:{pending.reason}" if pending else None


async def test_start_timeout_on_the_injected_clock(make_session, clock, wall):
    _, session = make_session(heartbeat_interval_s=1.0)
    live_in(session, S.STARTING)
    session.run_facts.last_seen = clock()
    clock.advance(14.9)  # start timeout: max(15, 3 heartbeats)
    assert sweep(session, clock, wall) is None
    clock.advance(0.2)
    assert sweep(session, clock, wall) == "kill:start_timeout"


async def test_heartbeat_deadline_is_two_intervals(make_session, clock, wall):
    _, session = make_session(heartbeat_interval_s=5.0)
    live_in(session, S.STARTING, S.READY)
    session.run_facts.last_seen = clock()
    clock.advance(9.9)
    assert sweep(session, clock, wall) is None
    session._on_heartbeat(session._gen)  # a heartbeat moves last_seen to the clock's now
    assert session.run_facts.last_seen == clock()
    clock.advance(9.9)
    assert sweep(session, clock, wall) is None
    clock.advance(0.2)
    assert sweep(session, clock, wall) == "kill:heartbeat_timeout"


async def test_qr_lifetime_and_the_last_code_expiry(make_session, clock, wall):
    _, session = make_session(qr_ttl_s=60, qr_max_cycles=2, heartbeat_interval_s=100)
    live_in(session, S.STARTING, S.QR)
    run = session.run_facts
    run.show_qr({"qr": "a", "attempt": 1, "expires_at": (wall() + 20) * 1000}, clock())
    clock.advance(30)
    wall.advance(30)
    assert sweep(session, clock, wall) is None  # the first code expired, but more will come
    run.show_qr({"qr": "b", "attempt": 2, "expires_at": (wall() + 20) * 1000}, clock())
    clock.advance(19.9)
    wall.advance(19.9)
    assert sweep(session, clock, wall) is None
    clock.advance(0.2)
    wall.advance(0.2)
    assert sweep(session, clock, wall) == "expire:qr_expired"  # the last allowed code has expired
    _, session = make_session(qr_ttl_s=60, qr_max_cycles=5, heartbeat_interval_s=100)
    live_in(session, S.STARTING, S.QR)
    session.run_facts.show_qr({"qr": "a", "attempt": 1, "expires_at": (wall() + 999) * 1000}, clock())
    clock.advance(60.1)
    assert sweep(session, clock, wall) == "expire:qr_expired"  # QR_TTL_S since the first code


async def test_a_deadline_between_two_sweeps_gets_a_timer_on_the_clock(make_session, clock, wall):
    _, session = make_session(heartbeat_interval_s=0.05)
    live_in(session, S.STARTING, S.READY)
    session.run_facts.last_seen = clock()
    clock.advance(0.09)  # the deadline (0.1 s of silence) falls before the next sweep
    session.sweep(clock(), wall() * 1000, clock() + 0.5)
    assert session._mailbox.pending is None and session._timer is not None
    clock.advance(0.02)  # the timer fires in ~0.01 s of loop time and reads the injected clock
    await asyncio.sleep(0.05)
    assert session._mailbox.pending is not None and session._mailbox.pending.reason == "heartbeat_timeout"


async def test_events_of_an_older_bridge_are_ignored(make_session, clock):
    host, session = make_session()
    live_in(session, S.STARTING)
    session._gen = 2
    session._on_event(1, BridgeEvent("state", {"state": "ready"}, 0))
    assert session.state is S.STARTING and not host.states
    session._on_event(2, BridgeEvent("state", {"state": "ready"}, 0))
    assert session.state is S.READY and host.states[-1]["state"] == "ready"


async def test_idle_logout_and_mark_stopped(make_session, tmp_path):
    host, session = make_session(desired_running=False, row={"state": "failed", "reason": "crash_loop"})
    assert session.state is S.FAILED
    session.mark_stopped("requested")
    assert [(s["previous"], s["state"], s["reason"]) for s in host.states] == [
        ("failed", "stopped", "requested")
    ]
    session.request("logout", "logout")
    await session.run()  # no bridge: wipes the folder and records it
    assert session.state is S.LOGGED_OUT and host.states[-1]["reason"] == "logout" and host.spawns == 0
    assert TS.match(host.states[-1]["since"])
