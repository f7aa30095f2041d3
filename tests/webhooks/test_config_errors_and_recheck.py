"""The WhatsApp config form's needs: every field error at once (``error.errors``), a "check again" of
the stored Business API credentials (``POST /api/whatsapp/config/verify``), and the Meta webhook's
callback URL and verify token for the admin (``GET /api/tenants/{id}/whatsapp/webhook-setup``)."""

from __future__ import annotations

import secrets

import pytest

from control_plane.app import create_app
from tests.webhooks.conftest import ADMIN

pytestmark = [pytest.mark.smoke, pytest.mark.timeout(60)]
PNID, WABA, TOKEN = "106540352242922", "102290129340398", "EAAG-good-token-1"


async def _tenant(client) -> dict:
    resp = await client.post("/api/tenants", json={"name": f"cfg-{secrets.token_hex(3)}"}, headers=ADMIN)
    tenant = await resp.json()
    return {"id": tenant["id"], "headers": {"Authorization": f"Bearer {tenant['api_key']}"}}


async def test_every_format_error_is_reported_at_once(app_client):
    tenant = await _tenant(app_client)
    body = {
        "api_type": "both",
        "phone_number_id": "abc",
        "waba_id": "x-1",
        "api_version": "23",
        "access_token": "s",
    }
    resp = await app_client.post("/api/whatsapp/config", json=body, headers=tenant["headers"])
    assert resp.status == 422
    error = (await resp.json())["error"]
    fields = [e["field"] for e in error["errors"]]
    assert fields == ["phone_number_id", "waba_id", "access_token", "api_version"]
    assert error["field"] == "phone_number_id" and error["code"] == "invalid_field"  # the first, as before
    assert all(e["code"] and e["message"] for e in error["errors"])


async def test_every_missing_business_field_is_reported_at_once(app_client):
    tenant = await _tenant(app_client)
    body = {"api_type": "business_api", "fallback_policy": "business_api_only"}
    resp = await app_client.post("/api/whatsapp/config", json=body, headers=tenant["headers"])
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert [(e["field"], e["code"]) for e in error["errors"]] == [
        ("phone_number_id", "missing_field"),
        ("access_token", "missing_field"),
    ]
    assert error["message"] == "'phone_number_id' is required when api_type is business_api"


async def test_a_single_field_error_lists_itself(app_client):
    tenant = await _tenant(app_client)
    resp = await app_client.post("/api/whatsapp/config", json={"api_type": "nope"}, headers=tenant["headers"])
    error = (await resp.json())["error"]
    assert resp.status == 422 and [e["field"] for e in error["errors"]] == ["api_type"]
    resp = await app_client.post("/api/whatsapp/config", data=b"{", headers=tenant["headers"])
    assert resp.status == 400 and "errors" not in (await resp.json())["error"]  # not about a field


async def test_check_again_records_verified_unverified_and_failed(app_client, fake):
    fake.add_number(PNID, WABA, TOKEN)
    tenant = await _tenant(app_client)
    verify = "/api/whatsapp/config/verify"
    resp = await app_client.post(verify, headers=tenant["headers"])
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "business_api_not_configured"
    config = {
        "api_type": "business_api",
        "fallback_policy": "business_api_only",
        "phone_number_id": PNID,
        "access_token": TOKEN,
    }
    assert (
        await app_client.post("/api/whatsapp/config", json=config, headers=tenant["headers"])
    ).status == 201
    # the Graph API answers a temporary error: unverified, with the reason
    fake.inject_error(1, endpoint=None)
    resp = await app_client.post(verify, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    verification = (await resp.json())["verification"]
    assert verification["status"] == "unverified" and "temporary error" in verification["message"]
    # reachable again: verified
    resp = await app_client.post(verify, headers=tenant["headers"])
    verification = (await resp.json())["verification"]
    assert verification["status"] == "verified" and verification["checked_at"]
    # the token expired since: failed, with Meta's reason, and it stays so on a read
    fake.expire_token(TOKEN)
    resp = await app_client.post(verify, headers=tenant["headers"])
    assert resp.status == 200
    verification = (await resp.json())["verification"]
    assert verification["status"] == "failed" and "access_token" in verification["message"]
    again = await (await app_client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert again["verification"]["status"] == "failed"
    # the admin's mirror does the same for any tenant
    resp = await app_client.post(f"/api/tenants/{tenant['id']}/whatsapp/config/verify", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["verification"]["status"] == "failed"


async def test_webhook_setup_gives_the_admin_the_callback_url_and_verify_token(app_client, fake):
    fake.add_number(PNID, WABA, TOKEN)
    tenant = await _tenant(app_client)
    path = f"/api/tenants/{tenant['id']}/whatsapp/webhook-setup"
    resp = await app_client.get(path, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    setup = await resp.json()
    host = app_client.make_url("/").host
    assert setup["callback_url"] == f"http://{host}:{app_client.port}/api/whatsapp/webhook"
    assert setup["verify_token"] is None  # nothing set yet
    config = {"api_type": "web", "verify_token": "a-verify-token-123"}
    assert (
        await app_client.post("/api/whatsapp/config", json=config, headers=tenant["headers"])
    ).status == 201
    assert (await (await app_client.get(path, headers=ADMIN)).json())["verify_token"] == "a-verify-token-123"
    # the tenant's own key reads it masked only: this route is the admin's
    assert (await app_client.get(path, headers=tenant["headers"])).status == 403
    masked = await (await app_client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert masked["verify_token"] == "********"
    assert (
        await app_client.get("/api/tenants/" + "0" * 32 + "/whatsapp/webhook-setup", headers=ADMIN)
    ).status == 404


async def test_webhook_setup_says_https_behind_a_trusted_proxy(aiohttp_client, make_settings, fake, empty_db):
    client = await aiohttp_client(
        create_app(make_settings(GRAPH_API_URL=fake.url, TRUSTED_PROXIES="127.0.0.1"))
    )
    tenant = await _tenant(client)
    headers = {**ADMIN, "X-Forwarded-Proto": "https", "Host": "gw.example.com"}
    resp = await client.get(f"/api/tenants/{tenant['id']}/whatsapp/webhook-setup", headers=headers)
    assert (await resp.json())["callback_url"] == "https://gw.example.com/api/whatsapp/webhook"
