"""A failed session carries its cause end to end: the real bridge (whatsapp-web.js + Debian's
Chromium, no WhatsApp reachable from here) reports why it could not start, and ``GET /api/session``,
the admin's mirror of it and the ``session.state`` events say it as ``reason`` (code), ``detail``
(a sentence an admin can act on) and ``error`` (the technical text)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.supervisor.process import find_orphans
from tests.support import unless_installed, wait_for

REPO = Path(__file__).resolve().parents[2]
CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.timeout(120),
    unless_installed(CHROME, f"no Chromium at {CHROME}"),
    unless_installed(
        REPO / "bridge/node_modules/whatsapp-web.js",
        "bridge/node_modules missing: PUPPETEER_SKIP_DOWNLOAD=true npm ci in bridge/",
    ),
]

REAL = {
    "BRIDGE_DRIVER": "wwebjs",
    "HEARTBEAT_INTERVAL_S": "1",
    "BACKOFF_BASE_S": "0.2",
    "BACKOFF_CAP_S": "0.5",
    "CRASH_LOOP_MAX": "2",
    "CRASH_LOOP_WINDOW_S": "120",
    "STOP_WAIT_S": "5",
    "BOOT_STAGGER_S": "0.01",
}
PROXY_VARS = ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def sessions_root():
    root = Path(tempfile.mkdtemp(prefix="cause-"))
    yield root
    leftovers = find_orphans(root.resolve())
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"bridges survived the test: {leftovers}"


@pytest.fixture
def chrome_path() -> str:
    return CHROME


@pytest.fixture
def settings(make_settings, sessions_root, chrome_path):
    return make_settings(SESSIONS_DIR=str(sessions_root), CHROME_PATH=chrome_path, **REAL)


@pytest.fixture
def refusing_proxy() -> str:
    """A proxy address nobody listens on (the port was just freed): Chromium reports
    ERR_PROXY_CONNECTION_FAILED."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def failed_session(client, tenant) -> dict:
    """Starts the tenant's session and waits for the crash-loop breaker to give up."""
    resp = await client.post("/api/session/start", headers=tenant["headers"])
    assert resp.status == 202, await resp.text()
    seen: dict = {}

    async def failed() -> bool:
        seen.update(await (await client.get("/api/session", headers=tenant["headers"])).json())
        return seen["state"] == "failed"

    await wait_for(failed, timeout=90, interval=0.5, message="the session fails")
    return seen


async def state_events(client, tenant) -> list[dict]:
    resp = await client.get("/api/events", params={"since": "0", "limit": "500"}, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    events = body["events"] if isinstance(body, dict) else body
    return [e["data"] for e in events if e["type"] == "session.state"]


async def test_unreachable_whatsapp_is_explained_in_the_api_the_admin_mirror_and_the_events(
    client, make_tenant, admin_headers, sync_engine, monkeypatch
):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    tenant = await make_tenant(sandbox=False)
    status = await failed_session(client, tenant)

    assert status["reason"] == "crash_loop"
    assert "net::ERR_" in status["error"] and "web.whatsapp.com" in status["error"]  # the technical text
    assert status["detail"].startswith("cannot reach web.whatsapp.com")  # ... and what to do about it
    assert "internet access" in status["detail"] and "press Start" in status["detail"]

    mirror = await client.get(f"/api/tenants/{tenant['id']}/session", headers=admin_headers)
    assert mirror.status == 200
    assert {k: (await mirror.json())[k] for k in ("reason", "detail", "error")} == {
        k: status[k] for k in ("reason", "detail", "error")
    }

    states = await state_events(client, tenant)
    backoff = next(s for s in states if s["state"] == "backoff")
    assert backoff["reason"] == "init_failed" and "net::ERR_" in backoff["error"]
    assert backoff["detail"].startswith("cannot reach web.whatsapp.com")
    disconnected = next(s for s in states if s["state"] == "disconnected")  # the bridge's own report
    assert disconnected["reason"] == "init_failed" and disconnected["error"] == backoff["error"]
    starting_again = [s for s in states if s["state"] == "starting" and s["previous"] == "backoff"]
    assert starting_again and starting_again[0]["error"] == backoff["error"]  # still says why
    failed = states[-1]
    assert (
        failed["state"] == "failed" and failed["reason"] == "crash_loop" and failed["cause"] == "init_failed"
    )
    assert failed["detail"] == status["detail"] and failed["error"] == status["error"]
    first = states[0]
    assert first["state"] == "starting" and first["detail"] is None and first["error"] is None

    with sync_engine.connect() as conn:  # kept: a restarted control plane still says why
        row = conn.execute(
            sa.text("SELECT reason, detail, error FROM session_state WHERE tenant_id = :t"),
            {"t": tenant["id"]},
        ).one()
    assert tuple(row) == (status["reason"], status["detail"], status["error"])


async def test_a_proxy_that_refuses_is_named(client, make_tenant, refusing_proxy, monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", refusing_proxy)
    monkeypatch.setenv("http_proxy", refusing_proxy)
    tenant = await make_tenant(sandbox=False)
    status = await failed_session(client, tenant)
    assert "net::ERR_" in status["error"], status
    assert status["detail"].startswith("cannot reach web.whatsapp.com"), status
    assert status["detail"].startswith("cannot reach web.whatsapp.com through the configured proxy"), status


@pytest.mark.parametrize("chrome_path", ["/nonexistent/chromium"])
async def test_a_missing_browser_is_named(client, make_tenant):
    tenant = await make_tenant(sandbox=False)
    status = await failed_session(client, tenant)
    assert "/nonexistent/chromium" in status["error"]
    assert status["detail"].startswith("the browser was not found: install Chromium"), status
