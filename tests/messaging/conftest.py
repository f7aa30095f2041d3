"""The real app (every cleanup context: database, realtime, providers, supervisor with real Node bridges
on the scripted driver, webhooks, dispatcher) against a fake Graph API; tenants made through the API."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.app import create_app
from control_plane.supervisor.process import find_orphans, kill_process_groups
from tests.conftest import ADMIN_TOKEN
from tests.fakes.graph_api import FakeGraphAPI
from tests.support import wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FAST = {
    "MESSAGING_POLL_S": "0.1",
    "MESSAGING_RETRY_BASE_S": "0.1",
    "MESSAGING_RETRY_CAP_S": "1",
    "WEB_RATE_PER_S": "50",
    "HEARTBEAT_INTERVAL_S": "0.5",
    "QR_INTERVAL_S": "5",
    "STOP_WAIT_S": "3",
    "BOOT_STAGGER_S": "0.01",
}


@pytest.fixture
def sessions_root():
    """A short private SESSIONS_DIR (socket paths must stay short); no bridge may outlive the test."""
    root = Path(tempfile.mkdtemp(prefix="msg-"))
    yield root
    leftovers = find_orphans(root.resolve())
    kill_process_groups(leftovers, wait_s=1.0)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the test survived it: {leftovers}"


@pytest.fixture
async def fake():
    async with FakeGraphAPI() as f:
        yield f


@pytest.fixture
def msg_settings(make_settings, fake, sessions_root):
    def make(**overrides: Any):
        return make_settings(
            **{"GRAPH_API_URL": fake.url, "SESSIONS_DIR": str(sessions_root), **FAST, **overrides}
        )

    return make


@pytest.fixture
async def app_client(msg_settings, empty_db, aiohttp_client):
    return await aiohttp_client(create_app(msg_settings()))


@pytest.fixture
def db_rows(sync_engine):
    def rows(sql: str, **params: Any) -> list[dict[str, Any]]:
        with sync_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    return rows


@pytest.fixture
def db_exec(sync_engine):
    def run(sql: str, **params: Any) -> None:
        with sync_engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    return run


async def create_tenant(http, *, sandbox: bool = False) -> dict[str, Any]:
    resp = await http.post(
        "/api/tenants", json={"name": f"msg-{secrets.token_hex(3)}", "sandbox": sandbox}, headers=ADMIN
    )
    assert resp.status == 201, await resp.text()
    tenant = await resp.json()
    tenant["headers"] = {"Authorization": f"Bearer {tenant['api_key']}"}
    return tenant


async def configure_business(
    http,
    fake: FakeGraphAPI,
    tenant: dict[str, Any],
    *,
    api_type: str = "both",
    policy: str = "web_first",
    rate_limit: int | None = None,
) -> dict[str, Any]:
    pnid = str(10**14 + secrets.randbelow(10**14))
    waba = str(10**14 + secrets.randbelow(10**14))
    token = "EAAG-" + secrets.token_hex(12)
    app_secret = "secret-" + secrets.token_hex(8)
    fake.add_number(pnid, waba, token)
    if rate_limit is not None:
        fake.set_rate_limit(pnid, rate_limit)
    resp = await http.post(
        "/api/whatsapp/config",
        headers=tenant["headers"],
        json={
            "api_type": api_type,
            "fallback_policy": policy,
            "phone_number_id": pnid,
            "waba_id": waba,
            "access_token": token,
            "app_secret": app_secret,
            "verify_token": "verify-" + secrets.token_hex(8),
        },
    )
    assert resp.status == 201, await resp.text()
    tenant.update(pnid=pnid, waba=waba, token=token, app_secret=app_secret)
    return tenant


async def ready_sandbox(http, tenant: dict[str, Any], *, within_s: float = 20.0) -> None:
    """Start the tenant's scripted session, scan its QR, wait until it is ready."""
    resp = await http.post("/api/session/start", headers=tenant["headers"])
    assert resp.status in (200, 202), await resp.text()

    async def state() -> str:
        r = await http.get("/api/session", headers=tenant["headers"])
        return (await r.json()).get("state")

    await wait_for(lambda: _is(state, "qr"), timeout=within_s, message="session shows a QR")
    resp = await http.post("/api/sandbox/scan", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    await wait_for(lambda: _is(state, "ready"), timeout=within_s, message="session ready")


async def _is(getter, value) -> bool:
    return await getter() == value


async def send(http, tenant: dict[str, Any], **body: Any) -> tuple[int, dict[str, Any]]:
    body.setdefault("to", "+1 650 555 1234")
    resp = await http.post("/api/messages", json=body, headers=tenant["headers"])
    return resp.status, await resp.json()


async def get_message(http, tenant: dict[str, Any], message_id: str) -> dict[str, Any]:
    resp = await http.get(f"/api/messages/{message_id}", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_status(
    http, tenant: dict[str, Any], message_id: str, *statuses: str, within_s: float = 15.0
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen["m"] = await get_message(http, tenant, message_id)
        return seen["m"]["status"] in statuses

    try:
        await wait_for(check, timeout=within_s, interval=0.05, message=f"message {message_id} in {statuses}")
    except AssertionError:
        raise AssertionError(f"message not in {statuses}: {seen.get('m')}") from None
    return seen["m"]


def open_window(db_exec, tenant_id: str, wa_id: str, *, hours_ago: float = 1.0) -> None:
    """The contact wrote ``hours_ago`` (the 24 h window; what an inbound message would set)."""
    db_exec(
        "UPDATE conversations SET last_inbound_at = :at WHERE tenant_id = :t AND wa_id = :w",
        at=_ago(hours_ago),
        t=tenant_id,
        w=wa_id,
    )


def _ago(hours: float):
    import datetime as dt

    return dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=hours)


async def conversation_history(http, tenant: dict[str, Any], conversation_id: int) -> list[dict[str, Any]]:
    """``GET /api/conversations/{id}/messages``, every page, oldest first (the API pages newest first)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        resp = await http.get(
            f"/api/conversations/{conversation_id}/messages", params=params, headers=tenant["headers"]
        )
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items[::-1]
