"""Saving Business API config validates it against the (fake) Graph API; template list sync."""

from __future__ import annotations

import secrets
import socket

import pytest

from control_plane.app import create_app
from tests.webhooks.conftest import ADMIN

pytestmark = [pytest.mark.smoke, pytest.mark.timeout(60)]


async def _tenant(client) -> dict:
    resp = await client.post("/api/tenants", json={"name": f"cfg-{secrets.token_hex(3)}"}, headers=ADMIN)
    tenant = await resp.json()
    return {"id": tenant["id"], "headers": {"Authorization": f"Bearer {tenant['api_key']}"}}


def _config(pnid: str, token: str, waba: str = "102290129340398") -> dict:
    return {
        "api_type": "business_api",
        "fallback_policy": "business_api_only",
        "phone_number_id": pnid,
        "waba_id": waba,
        "access_token": token,
        "app_secret": "app-secret-abcdef",
        "verify_token": "verify-me-please",
    }


async def test_valid_credentials_are_verified(app_client, fake):
    fake.add_number("106540352242922", "102290129340398", "EAAG-good-token-1")
    tenant = await _tenant(app_client)
    resp = await app_client.post(
        "/api/whatsapp/config",
        json=_config("106540352242922", "EAAG-good-token-1"),
        headers=tenant["headers"],
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["verification"]["status"] == "verified" and body["verification"]["checked_at"]
    assert "15550783881" in body["verification"]["message"]
    again = await (await app_client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert again["verification"]["status"] == "verified"
    # a change that does not touch credentials keeps the verification without calling the Graph API
    calls = len(fake.requests)
    resp = await app_client.put(
        "/api/whatsapp/config", json={"fallback_policy": "business_api_only"}, headers=tenant["headers"]
    )
    assert resp.status == 200 and (await resp.json())["verification"]["status"] == "verified"
    assert len(fake.requests) == calls


async def test_rejected_token_is_400_naming_access_token_and_nothing_saved(app_client, fake):
    fake.add_number("106540352242922", "102290129340398", "EAAG-good-token-1")
    tenant = await _tenant(app_client)
    resp = await app_client.post(
        "/api/whatsapp/config", json=_config("106540352242922", "EAAG-wrong-token"), headers=tenant["headers"]
    )
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert (
        error["field"] == "access_token"
        and error["code"] == "invalid_access_token"
        and "190" in error["message"]
    )
    assert (await (await app_client.get("/api/whatsapp/config", headers=tenant["headers"])).json())[
        "configured"
    ] is False
    # an expired token on PUT: refused, the stored config untouched
    resp = await app_client.post(
        "/api/whatsapp/config",
        json=_config("106540352242922", "EAAG-good-token-1"),
        headers=tenant["headers"],
    )
    assert resp.status == 201
    fake.add_number("106540352242922", "102290129340398", "EAAG-expired-token")
    fake.expire_token("EAAG-expired-token")
    resp = await app_client.put(
        "/api/whatsapp/config", json={"access_token": "EAAG-expired-token"}, headers=tenant["headers"]
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "access_token"


async def test_number_the_token_cannot_use_is_400_naming_phone_number_id(app_client, fake):
    fake.add_number("106540352242922", "102290129340398", "EAAG-good-token-1")
    fake.add_token("EAAG-token-without-numbers")
    tenant = await _tenant(app_client)
    resp = await app_client.post(
        "/api/whatsapp/config",
        json=_config("106540352242922", "EAAG-token-without-numbers"),
        headers=tenant["headers"],
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["field"] == "phone_number_id"


async def test_unreachable_graph_api_saves_unverified(aiohttp_client, make_settings, empty_db):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await aiohttp_client(create_app(make_settings(GRAPH_API_URL=f"http://127.0.0.1:{port}")))
    tenant = await _tenant(client)
    resp = await client.post(
        "/api/whatsapp/config", json=_config("106540352242922", "EAAG-any-token"), headers=tenant["headers"]
    )
    assert resp.status == 201, await resp.text()
    verification = (await resp.json())["verification"]
    assert verification["status"] == "unverified" and "could not be reached" in verification["message"]


async def test_web_only_config_is_not_checked(app_client, fake):
    tenant = await _tenant(app_client)
    resp = await app_client.post("/api/whatsapp/config", json={"api_type": "web"}, headers=tenant["headers"])
    assert resp.status == 201 and (await resp.json())["verification"] is None
    assert fake.requests == []


async def test_template_sync_mirrors_the_waba(app_client, fake):
    fake.add_number("106540352242922", "102290129340398", "EAAG-good-token-1")
    for i in range(130):  # more than one page
        fake.add_template("102290129340398", f"order_update_{i:03d}", "en_US")
    fake.add_template(
        "102290129340398",
        "order_update_000",
        "pt_BR",
        status="PENDING",
        components=[{"type": "BODY", "text": "Olá {{1}}"}],
    )
    tenant = await _tenant(app_client)
    other = await _tenant(app_client)
    assert (await app_client.get("/api/whatsapp/templates", headers=tenant["headers"])).status == 200
    resp = await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "business_api_not_configured"
    await app_client.post(
        "/api/whatsapp/config",
        json=_config("106540352242922", "EAAG-good-token-1"),
        headers=tenant["headers"],
    )
    resp = await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["created"] == 131 and body["total"] == 131 and len(body["templates"]) == 131
    listed = (await (await app_client.get("/api/whatsapp/templates", headers=tenant["headers"])).json())[
        "templates"
    ]
    pt = [t for t in listed if t["language"] == "pt_BR"]
    assert len(listed) == 131 and pt[0]["status"] == "PENDING" and pt[0]["components"]
    # removed at Meta -> removed here; a second sync updates the rest
    del fake.templates["102290129340398"][("order_update_001", "en_US")]
    body = await (await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])).json()
    assert body["deleted"] == 1 and body["updated"] == 130 and body["created"] == 0
    # tenant-scoped
    assert (await (await app_client.get("/api/whatsapp/templates", headers=other["headers"])).json())[
        "templates"
    ] == []
    # the admin mirror
    resp = await app_client.get(f"/api/tenants/{tenant['id']}/whatsapp/templates", headers=ADMIN)
    assert resp.status == 200 and len((await resp.json())["templates"]) == 130
