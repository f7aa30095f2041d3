"""POST /api/session/start|stop (tenant and admin routes) answer at once, 202, while a slow bridge is
still starting or stopping; the supervisor then brings the session to the desired state."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from control_plane.supervisor.process import find_orphans
from tests.api.test_session_api import session_state, wait_state
from tests.supervisor.conftest import FAST
from tests.support import wait_for

pytestmark = pytest.mark.timeout(90)

ANSWER_WITHIN_S = 1.0
SLOW_START_MS = 2000
SLOW_STOP_MS = 2500  # under STOP_WAIT_S (3 s): the bridge still exits by itself, just late

# A slow host for the real bridge: main.js starts SLOW_START_MS late, and its SIGTERM handler runs
# SLOW_STOP_MS late (a SIGTERM before main.js has started ends the process as late).
SLOW_BRIDGE = """'use strict';
const on = process.on.bind(process);
let started = false;
process.on = (event, fn) =>
    on(event, event === 'SIGTERM' ? (...args) => setTimeout(() => fn(...args), %(stop)d) : fn);
on('SIGTERM', () => {
    if (!started) setTimeout(() => process.exit(0), %(stop)d);
});
setTimeout(() => {
    started = true;
    require(%(main)s);
}, %(start)d);
"""


@pytest.fixture(autouse=True)
def sessions_root():
    root = Path(tempfile.mkdtemp(prefix="scmd-"))
    yield root
    leftovers = find_orphans(root.resolve())
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"bridges survived the test: {leftovers}"


@pytest.fixture
def settings(make_settings, sessions_root, tmp_path):
    base = make_settings(SESSIONS_DIR=str(sessions_root), **FAST)
    script = tmp_path / "slow_bridge.js"
    script.write_text(
        SLOW_BRIDGE
        % {"main": json.dumps(str(base.bridge_script)), "start": SLOW_START_MS, "stop": SLOW_STOP_MS}
    )
    return dataclasses.replace(base, bridge_script=script)


async def timed_post(client, path: str, headers: dict[str, str]) -> tuple[dict, float]:
    started = time.monotonic()
    resp = await client.post(path, headers=headers)
    took = time.monotonic() - started
    assert resp.status == 202, await resp.text()
    return await resp.json(), took


async def test_start_and_stop_answer_at_once_while_a_slow_bridge_starts_and_stops(
    client, make_tenant, admin_headers, sessions_root
):
    tenant = await make_tenant(sandbox=True)
    h, admin_base = tenant["headers"], f"/api/tenants/{tenant['id']}/session"

    status, took = await timed_post(client, "/api/session/start", h)
    assert took < ANSWER_WITHIN_S and status["desired_state"] == "running", (took, status)
    status, took = await timed_post(client, f"{admin_base}/start", admin_headers)  # a second start
    assert took < ANSWER_WITHIN_S and status["desired_state"] == "running", (took, status)
    assert status["state"] in ("stopped", "starting")  # still on its way: the answer did not wait
    first = await wait_state(client, h, "qr", wait_s=20)

    # stop, then start again at once, while the bridge takes SLOW_STOP_MS to go
    status, took = await timed_post(client, f"{admin_base}/stop", admin_headers)
    assert took < ANSWER_WITHIN_S and status["desired_state"] == "stopped", (took, status)
    assert status["state"] != "stopped" and status["pid"] == first["pid"]
    status, took = await timed_post(client, "/api/session/start", h)
    assert took < ANSWER_WITHIN_S and status["desired_state"] == "running", (took, status)

    async def running_again() -> bool:
        now = await session_state(client, h)
        return now["state"] == "qr" and now["pid"] not in (None, first["pid"])

    await wait_for(running_again, timeout=25, message="stopped, then started again (a new bridge)")
    assert (await session_state(client, h))["desired_state"] == "running"

    status, took = await timed_post(client, "/api/session/stop", h)
    assert took < ANSWER_WITHIN_S and status["desired_state"] == "stopped", (took, status)
    stopped = await wait_state(client, h, "stopped", wait_s=20)
    assert stopped["pid"] is None and stopped["desired_state"] == "stopped"
    assert find_orphans((sessions_root / tenant["id"]).resolve()) == []
