"""Bridge kill storm: several sandbox tenants (real Node bridges on the scripted driver, the whole app
with its supervisor), their bridges killed with SIGKILL again and again: the process alone, its whole
process group, or twice in a row (the second while the new bridge is still starting). Meanwhile the
API changes what some sessions should be (one is stopped, one restarted). After the storm every
session is in its desired state, every process under the sessions folder is a live session's bridge
(no orphan of any killed generation), and after the app's shutdown nothing at all is left (the
``short_sessions_root`` fixture checks that)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import psutil
import pytest

from control_plane.supervisor.process import find_orphans
from tests.chaos.world import ADMIN
from tests.support import wait_for

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(240)]

TENANTS = 4
KILLS = 40
RECOVERY_BOUND_S = 30.0  # generous: 2 shared cores; the figures say what it really is
WAYS = ("process", "group", "twice")


@pytest.fixture
def gateway_env() -> dict[str, str]:
    # a storm is not a crash loop to give up on: the policy's give-up has its own tests
    return {"CRASH_LOOP_MAX": "100000", "BACKOFF_CAP_S": "0.5"}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Storm:
    def __init__(self, sup) -> None:
        self.sup = sup
        self.kills = 0
        self.by_way: dict[str, int] = dict.fromkeys(WAYS, 0)
        self.recovery_s: list[float] = []
        self.killed: list[int] = []
        self.stopping: set[str] = set()

    def kill(self, pid: int, way: str) -> None:
        try:
            if way == "group":
                os.killpg(pid, signal.SIGKILL)  # the bridge is its own group's leader
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills += 1
        self.killed.append(pid)

    async def ready_again(self, tid: str, old: int) -> None:
        await wait_for(
            lambda: (self.sup.is_ready(tid) and self.sup.pid(tid) not in (None, old)) or tid in self.stopping,
            timeout=RECOVERY_BOUND_S,
            interval=0.02,
            message=f"{tid} ready again after a kill",
        )

    async def run(self, tid: str, n: int) -> None:
        """Kill ``tid``'s bridge while the storm lasts, each time once it is ready again."""
        i = n
        while self.kills < KILLS and tid not in self.stopping:
            old = self.sup.pid(tid)
            way = WAYS[i % len(WAYS)]
            i += 1
            killed_at = time.monotonic()
            self.kill(old, way)
            self.by_way[way] += 1
            if way == "twice":  # again, as soon as the next bridge exists (starting, not ready)
                await wait_for(
                    lambda o=old: self.sup.pid(tid) not in (None, o) or tid in self.stopping,
                    timeout=RECOVERY_BOUND_S,
                    interval=0.005,
                    message="the next bridge",
                )
                if tid in self.stopping:
                    return
                old = self.sup.pid(tid)
                killed_at = time.monotonic()
                self.kill(old, "process")
            await self.ready_again(tid, old)
            if tid not in self.stopping:
                self.recovery_s.append(time.monotonic() - killed_at)


async def _sandbox_tenant(gateway, name: str) -> str:
    async with gateway.http.post(
        gateway.url + "/api/tenants", json={"name": name, "sandbox": True}, headers=ADMIN
    ) as resp:
        assert resp.status == 201, await resp.text()
        tenant = await resp.json()
    await _session(gateway, tenant["id"], "start")
    return tenant["id"]


async def _session(gateway, tid: str, command: str) -> None:
    url = f"{gateway.url}/api/tenants/{tid}/session/{command}"
    async with gateway.http.post(url, headers=ADMIN) as resp:
        assert resp.status in (200, 202), await resp.text()


async def test_bridge_kill_storm_every_session_back_to_its_desired_state_no_orphans(gateway, figures):
    sup = gateway.app["supervisor"]
    tids = [await _sandbox_tenant(gateway, f"storm-{i}") for i in range(TENANTS)]
    await wait_for(lambda: all(sup.qr(t) for t in tids), timeout=60, message="every QR")
    for tid in tids:
        await sup.sandbox(tid, "scan", {})
    await wait_for(lambda: all(sup.is_ready(t) for t in tids), timeout=60, message="every session ready")

    storm = Storm(sup)
    stopped, restarted = tids[-1], tids[-2]
    started = time.monotonic()
    runs = [asyncio.create_task(storm.run(t, i)) for i, t in enumerate(tids)]
    try:
        await wait_for(lambda: storm.kills >= KILLS // 2, timeout=120, message="half the storm")
        storm.stopping.add(stopped)
        await _session(gateway, stopped, "stop")  # desired: stopped, mid-storm
        await _session(gateway, restarted, "restart")  # desired: running, a fresh bridge
        await asyncio.gather(*runs)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    storm_s = time.monotonic() - started

    running = [t for t in tids if t != stopped]
    want = {t: ("stopped", "stopped") if t == stopped else ("ready", "running") for t in tids}
    seen: dict[str, tuple[str, str]] = {}

    async def converged() -> bool:
        for t in tids:
            status = await sup.status(t)
            seen[t] = (status["state"], status["desired_state"])
        return seen == want and sup.pid(stopped) is None

    root = gateway.sessions_root.resolve()
    live: set[int | None] = set()

    def only_live_bridges() -> bool:
        live.clear()
        live.update(sup.pid(t) for t in running)
        return set(find_orphans(root)) == live and all(_gone(p) for p in storm.killed)

    with contextlib.suppress(AssertionError):  # the figures first, then the verdict
        await wait_for(converged, timeout=60, interval=0.1, message="every session in its desired state")
        await wait_for(only_live_bridges, timeout=15, interval=0.1, message="only live bridges remain")
    orphans = sorted(set(find_orphans(root)) - live)
    killed_alive = [p for p in storm.killed if not _gone(p)]
    restarts = sum([(await sup.status(t))["restarts"] for t in tids])
    figures(
        "bridge kill storm",
        tenants=TENANTS,
        kills=storm.kills,
        **{f"kills_{way}": n for way, n in storm.by_way.items()},
        storm_s=round(storm_s, 1),
        recovery_p50_s=round(_pct(storm.recovery_s, 50), 2),
        recovery_p99_s=round(_pct(storm.recovery_s, 99), 2),
        recovery_max_s=round(max(storm.recovery_s), 2),
        restarts=restarts,
        orphans=len(orphans),
        killed_still_alive=len(killed_alive),
    )
    assert seen == want, f"sessions not in their desired state: {seen}, wanted {want}"
    assert storm.kills >= KILLS and orphans == [] and killed_alive == []
    assert None not in live and len(live) == len(running)
