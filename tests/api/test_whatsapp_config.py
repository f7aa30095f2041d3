"""Per-tenant WhatsApp config: validation, write-only encrypted secrets, phone_number_id uniqueness."""

from __future__ import annotations

import io
import logging

import pytest
import sqlalchemy as sa

from control_plane.crypto import SecretBox
from tests.conftest import SECRET_KEY

pytestmark = pytest.mark.smoke

BUSINESS = {
    "api_type": "both",
    "fallback_policy": "web_first",
    "phone_number_id": "106540352242922",
    "waba_id": "102290129340398",
    "access_token": "EAAG-secret-token-123456",
    "app_secret": "app-secret-abcdef",
    "verify_token": "verify-me-please",
    "api_version": "v23.0",
}


async def test_unconfigured_tenant_reads_defaults(client, make_tenant):
    tenant = await make_tenant()
    body = await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert body["configured"] is False and body["api_type"] == "web" and body["fallback_policy"] == "web_only"


async def test_secrets_are_ciphertext_at_rest_and_masked_on_read_and_never_logged(
    client, make_tenant, sync_engine, caplog
):
    caplog.set_level(logging.DEBUG)
    tenant = await make_tenant()
    resp = await client.post("/api/whatsapp/config", json=BUSINESS, headers=tenant["headers"])
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    for secret in ("access_token", "app_secret", "verify_token"):
        assert body[secret] == "********"
    assert body["phone_number_id"] == BUSINESS["phone_number_id"] and body["business_api_ready"] is True
    with sync_engine.connect() as conn:
        row = (
            conn.execute(sa.text("SELECT * FROM whatsapp_config WHERE tenant_id = :t"), {"t": tenant["id"]})
            .one()
            ._mapping
        )
    box = SecretBox(SECRET_KEY)
    for secret in ("access_token", "app_secret", "verify_token"):
        raw = row[f"{secret}_enc"]
        assert BUSINESS[secret] not in raw
        assert box.decrypt(raw) == BUSINESS[secret]
    again = await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert again["access_token"] == "********"
    logged = caplog.text
    for secret in ("access_token", "app_secret", "verify_token"):
        assert BUSINESS[secret] not in logged


async def test_put_is_partial_and_keeps_secrets(client, make_tenant, sync_engine):
    tenant = await make_tenant()
    await client.post("/api/whatsapp/config", json=BUSINESS, headers=tenant["headers"])
    resp = await client.put(
        "/api/whatsapp/config", json={"fallback_policy": "business_api_first"}, headers=tenant["headers"]
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["fallback_policy"] == "business_api_first" and body["access_token"] == "********"
    assert (await client.post("/api/whatsapp/config", json=BUSINESS, headers=tenant["headers"])).status == 409


async def test_duplicate_phone_number_id_is_409(client, make_tenant):
    a, b = await make_tenant("a"), await make_tenant("b")
    assert (await client.post("/api/whatsapp/config", json=BUSINESS, headers=a["headers"])).status == 201
    resp = await client.put("/api/whatsapp/config", json=BUSINESS, headers=b["headers"])
    assert resp.status == 409
    err = (await resp.json())["error"]
    assert err["code"] == "phone_number_id_taken" and err["field"] == "phone_number_id"
    assert (await (await client.get("/api/whatsapp/config", headers=b["headers"])).json())[
        "configured"
    ] is False


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"api_type": "telegram"}, 422, "api_type"),
        ({"api_type": "web", "colour": "red"}, 422, "colour"),
        ({"is_active": "yes"}, 422, "is_active"),
        ({"phone_number_id": 106540352242922}, 422, "phone_number_id"),
        ({"phone_number_id": "12ab"}, 422, "phone_number_id"),
        # A PUT is partial: what it leaves out could be stored, so the config it leaves is the conflict.
        ({"api_type": "business_api", "fallback_policy": "business_api_only"}, 409, "phone_number_id"),
        ({"api_type": "business_api", "phone_number_id": None}, 422, "phone_number_id"),
        ({"api_type": "web", "fallback_policy": "business_api_only"}, 422, "fallback_policy"),
        ({"api_version": "23"}, 422, "api_version"),
    ],
)
async def test_bad_values_are_4xx_naming_the_field_and_write_nothing(
    client, make_tenant, body, status, field
):
    tenant = await make_tenant()
    resp = await client.put("/api/whatsapp/config", json=body, headers=tenant["headers"])
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["field"] == field
    assert (await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json())[
        "configured"
    ] is False


async def test_malformed_and_oversized_bodies(client, make_tenant, settings):
    tenant = await make_tenant()
    headers = {**tenant["headers"], "Content-Type": "application/json"}
    resp = await client.put("/api/whatsapp/config", data=b'{"api_type": ', headers=headers)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"
    resp = await client.put("/api/whatsapp/config", data=b"[1, 2]", headers=headers)
    assert resp.status == 422
    big = b'{"api_type": "web", "waba_id": "' + b"1" * (settings.max_body_bytes + 10) + b'"}'
    resp = await client.put("/api/whatsapp/config", data=big, headers=headers)
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "payload_too_large"
    chunked = await client.put("/api/whatsapp/config", data=io.BytesIO(big), headers=headers)
    assert chunked.status == 413
    assert (await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json())[
        "configured"
    ] is False


async def test_admin_mirror_reads_and_writes_any_tenant(client, admin_headers, make_tenant):
    tenant = await make_tenant()
    path = f"/api/tenants/{tenant['id']}/whatsapp/config"
    resp = await client.put(
        path, json={"api_type": "web", "fallback_policy": "web_only"}, headers=admin_headers
    )
    assert resp.status == 200
    mine = await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert mine["configured"] is True


CLOUD_ONLY = {k: v for k, v in BUSINESS.items() if k != "fallback_policy"} | {"api_type": "business_api"}


@pytest.mark.parametrize(
    "body, policy",
    [
        (CLOUD_ONLY, "business_api_only"),
        ({**CLOUD_ONLY, "api_type": "both"}, "web_first"),
        ({"api_type": "web"}, "web_only"),
        ({}, "web_only"),
    ],
)
@pytest.mark.parametrize("method", ["post", "put"])
async def test_fallback_policy_follows_api_type_when_not_given(client, make_tenant, body, policy, method):
    tenant = await make_tenant()
    resp = await getattr(client, method)("/api/whatsapp/config", json=body, headers=tenant["headers"])
    assert resp.status in (200, 201), await resp.text()
    assert (await resp.json())["fallback_policy"] == policy
    stored = await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert stored["configured"] is True and stored["fallback_policy"] == policy


async def test_changing_api_type_moves_the_default_policy_and_keeps_a_chosen_one(client, make_tenant):
    tenant = await make_tenant()
    put = client.put
    headers = tenant["headers"]
    assert (await put("/api/whatsapp/config", json={"api_type": "web"}, headers=headers)).status == 200
    resp = await put("/api/whatsapp/config", json=CLOUD_ONLY, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["fallback_policy"] == "business_api_only"
    # the same api_type again keeps the stored (chosen) policy
    resp = await put(
        "/api/whatsapp/config",
        json={"api_type": "both", "fallback_policy": "business_api_first"},
        headers=headers,
    )
    assert (await resp.json())["fallback_policy"] == "business_api_first"
    resp = await put("/api/whatsapp/config", json={"api_type": "both", "is_active": True}, headers=headers)
    assert (await resp.json())["fallback_policy"] == "business_api_first"
    # back to web: the Business-only policies cannot stay, the default follows
    resp = await put("/api/whatsapp/config", json={"api_type": "web"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["fallback_policy"] == "web_only"


@pytest.mark.parametrize(
    "body",
    [
        {**CLOUD_ONLY, "fallback_policy": "web_only"},
        {"api_type": "web", "fallback_policy": "business_api_only"},
    ],
)
async def test_an_explicit_incompatible_policy_is_still_422(client, make_tenant, body):
    tenant = await make_tenant()
    resp = await client.post("/api/whatsapp/config", json=body, headers=tenant["headers"])
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "fallback_policy"
    stored = await (await client.get("/api/whatsapp/config", headers=tenant["headers"])).json()
    assert stored["configured"] is False
