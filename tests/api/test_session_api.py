"""/api/session and /api/sandbox over HTTP, with real scripted bridges behind the whole app."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from control_plane.supervisor.process import find_orphans
from tests.supervisor.conftest import FAST
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def sessions_root():
    """Autouse, so it is set up before the app's client and checked after the app has closed."""
    root = Path(tempfile.mkdtemp(prefix="sapi-"))
    yield root
    leftovers = find_orphans(root.resolve())
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"bridges survived the test: {leftovers}"


@pytest.fixture
def settings(make_settings, sessions_root):
    return make_settings(SESSIONS_DIR=str(sessions_root), **FAST)


async def session_state(client, headers) -> dict:
    resp = await client.get("/api/session", headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_state(client, headers, state: str, wait_s: float = 10) -> dict:
    seen: dict = {}

    async def reached() -> bool:
        seen.update(await session_state(client, headers))
        return seen["state"] == state

    await wait_for(reached, timeout=wait_s, message=f"session state {state}")
    return seen


@pytest.mark.smoke
async def test_session_lifecycle_over_http(client, make_tenant, admin_headers, sessions_root):
    tenant = await make_tenant(sandbox=True)
    h = tenant["headers"]
    status = await session_state(client, h)
    assert status["state"] == "stopped" and status["desired_state"] == "stopped" and status["pid"] is None

    resp = await client.get("/api/session/qr", headers=h)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "qr_not_available"

    resp = await client.post("/api/session/start", headers=h)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["desired_state"] == "running"
    await wait_state(client, h, "qr")

    resp = await client.get("/api/session/qr?format=json", headers=h)
    qr = await resp.json()
    assert resp.status == 200 and qr["attempt"] == 1 and qr["qr"].startswith("2@") and qr["expires_at"]
    resp = await client.get("/api/session/qr", headers=h)
    assert resp.status == 200 and resp.content_type == "image/png"
    assert (await resp.read()).startswith(b"\x89PNG") and resp.headers["X-QR-Attempt"] == "1"
    resp = await client.get("/api/session/qr?format=svg&scale=3", headers=h)
    assert resp.status == 200 and resp.content_type == "image/svg+xml" and b"<svg" in await resp.read()
    resp = await client.get("/api/session/qr?format=gif", headers=h)
    assert resp.status == 422

    resp = await client.post("/api/sandbox/scan", headers=h)
    assert resp.status == 200, await resp.text()
    ready = await wait_state(client, h, "ready")
    assert (
        ready["own_number"] and ready["pid"] and ready["memory_bytes"] > 0 and ready["driver"] == "scripted"
    )

    # the admin sees the same session under /api/tenants/{id}/session
    resp = await client.get(f"/api/tenants/{tenant['id']}/session", headers=admin_headers)
    assert resp.status == 200 and (await resp.json())["pid"] == ready["pid"]

    resp = await client.post("/api/sandbox/incoming", json={"from": "15550002222", "text": "hi"}, headers=h)
    body = await resp.json()
    assert resp.status == 200 and body["ok"] and body["id"].startswith("false_15550002222@c.us_")
    resp = await client.post("/api/sandbox/ack", json={"id": body["id"], "status": "read"}, headers=h)
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/sandbox/scan", headers=h)  # nothing to scan when ready
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "bridge_invalid_state"

    resp = await client.post(f"/api/tenants/{tenant['id']}/session/restart", headers=admin_headers)
    assert resp.status == 202
    await wait_state(client, h, "ready")

    resp = await client.post("/api/session/stop", headers=h)
    assert resp.status == 202 and (await resp.json())["desired_state"] == "stopped"
    stopped = await wait_state(client, h, "stopped")
    assert stopped["desired_state"] == "stopped"

    async def no_pid() -> bool:  # the pid may trail the state by a moment (seen once, see the note)
        return (await session_state(client, h))["pid"] is None

    await wait_for(no_pid, timeout=5, message="no bridge pid once stopped")
    assert find_orphans((sessions_root / tenant["id"]).resolve()) == []

    resp = await client.post("/api/session/logout", headers=h)
    assert resp.status == 200 and (await resp.json())["state"] == "logged_out"
    assert not (sessions_root / tenant["id"] / "scripted-auth.json").exists()


async def test_sandbox_crash_and_hang_are_recovered(client, make_tenant):
    tenant = await make_tenant(sandbox=True)
    h = tenant["headers"]
    await client.post("/api/session/start", headers=h)
    await wait_state(client, h, "qr")
    await client.post("/api/sandbox/scan", headers=h)
    first = await wait_state(client, h, "ready")

    resp = await client.post("/api/sandbox/crash", json={}, headers=h)
    assert resp.status == 200
    await wait_for(lambda: _restarted(client, h, first["pid"]), timeout=10, message="restart after crash")
    second = await session_state(client, h)
    resp = await client.post("/api/sandbox/hang", headers=h)
    assert resp.status == 200
    await wait_for(lambda: _restarted(client, h, second["pid"]), timeout=10, message="restart after hang")
    status = await session_state(client, h)
    assert status["restarts"] == 2


async def _restarted(client, headers, old_pid: int) -> bool:
    status = await session_state(client, headers)
    return status["state"] == "ready" and status["pid"] not in (None, old_pid)


async def test_sandbox_refuses_real_tenants_and_stopped_sessions(client, make_tenant):
    real = await make_tenant(sandbox=False)
    for path, body in [
        ("scan", None),
        ("incoming", {"from": "15550002222", "text": "x"}),
        ("hang", None),
        ("crash", {}),
        ("leak", {"mb": 1}),
        ("disconnect", {}),
        ("ack", {"id": "x", "ack": 3}),
    ]:
        resp = await client.post(f"/api/sandbox/{path}", json=body, headers=real["headers"])
        assert resp.status == 403, path
        assert (await resp.json())["error"]["code"] == "not_sandbox"

    sandbox = await make_tenant(sandbox=True)
    resp = await client.post("/api/sandbox/scan", headers=sandbox["headers"])
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "session_not_ready"


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("ack", {"id": "x", "ack": 3, "status": "read"}, None),
        ("ack", {"id": "x"}, None),
        ("ack", {"id": "x", "ack": 9}, "ack"),
        ("leak", {"mb": 100000}, "mb"),
        ("incoming", {"text": "no sender"}, "from"),
        (
            "incoming",
            {"from": "15550002222", "media": {"mimetype": "text/plain", "path": "/etc/passwd"}},
            "media.path",
        ),
        ("crash", {"exit_code": 0}, "exit_code"),
        ("disconnect", {"reason": "../../x"}, "reason"),
    ],
)
async def test_sandbox_bad_bodies_are_422(client, make_tenant, path, body, field):
    tenant = await make_tenant(sandbox=True)
    resp = await client.post(f"/api/sandbox/{path}", json=body, headers=tenant["headers"])
    assert resp.status == 422, await resp.text()
    if field:
        assert (await resp.json())["error"]["field"] == field


async def test_delete_tenant_stops_the_bridge_and_removes_its_folder(
    client, make_tenant, admin_headers, sessions_root
):
    tenant = await make_tenant(sandbox=True)
    await client.post("/api/session/start", headers=tenant["headers"])
    await wait_state(client, tenant["headers"], "qr")
    assert (sessions_root / tenant["id"]).is_dir()
    resp = await client.delete(f"/api/tenants/{tenant['id']}", headers=admin_headers)
    assert resp.status == 204
    assert not (sessions_root / tenant["id"]).exists()
    assert find_orphans(sessions_root.resolve()) == []


async def test_malicious_admin_paths_are_404(client, admin_headers, sessions_root):
    for tid in ["..%2F..%2Fetc", "%2e%2e", "0" * 31, "Z" * 32]:
        resp = await client.post(f"/api/tenants/{tid}/session/start", headers=admin_headers)
        # 404 from the id check; "%2e%2e" is normalized away by the client to /api/session/start,
        # where the admin token is no tenant key (401). Either way nothing is created.
        assert resp.status in (401, 404), tid
    assert list(sessions_root.iterdir()) == []


async def test_sessions_disabled_is_409(
    aiohttp_client, make_settings, empty_db, admin_headers, sessions_root
):
    from control_plane.app import create_app

    http = await aiohttp_client(
        create_app(make_settings(SUPERVISOR_ENABLED="false", SESSIONS_DIR=str(sessions_root)))
    )
    resp = await http.post("/api/tenants", json={"name": "x", "sandbox": True}, headers=admin_headers)
    key = (await resp.json())["api_key"]
    resp = await http.post("/api/session/start", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "supervisor_disabled"
    resp = await http.get("/api/session/qr", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 409
