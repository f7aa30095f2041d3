"""The one error shape, health endpoints and the access log."""

from __future__ import annotations

import logging

import pytest

from control_plane.app import create_app

pytestmark = pytest.mark.smoke


async def test_unknown_route_is_json_404(client):
    resp = await client.get("/no/such/thing")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_wrong_method_is_json_405(client, admin_headers):
    resp = await client.request("PATCH", "/healthz")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_healthz_and_readyz(client):
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["database"] == "ok"


async def test_readyz_names_the_failed_dependency(aiohttp_client, make_settings):
    settings = make_settings(
        DATABASE_URL="mysql://root@127.0.0.1:1/nowhere",
        REDIS_URL="redis://127.0.0.1:1/0",
        SUPERVISOR_ENABLED="false",
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["database"].startswith("failed") and body["checks"]["redis"].startswith("failed")
    assert "database" in body["error"]["message"]


async def test_database_outage_on_a_route_is_503_json(aiohttp_client, make_settings, admin_headers):
    app = create_app(
        make_settings(DATABASE_URL="mysql://root@127.0.0.1:1/nowhere", SUPERVISOR_ENABLED="false")
    )
    client = await aiohttp_client(app)
    resp = await client.post("/api/tenants", json={"name": "x"}, headers=admin_headers)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "database_unavailable"


async def test_access_log_line_carries_latency_and_tenant(client, make_tenant, caplog):
    tenant = await make_tenant()
    caplog.set_level(logging.INFO, logger="control_plane.access")
    await client.get("/api/me", headers=tenant["headers"])
    lines = [r for r in caplog.records if r.name == "control_plane.access" and "/api/me" in r.getMessage()]
    assert lines and lines[-1].getMessage().endswith("ms")
    assert lines[-1].tenant_id == tenant["id"]
