"""The webhook verify token is stored as HMAC-SHA256 keyed from SECRET_KEY (not an unsalted SHA-256),
Meta's handshake finds it by that hash, and rows stored the old way are upgraded at start."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import sqlalchemy as sa

from control_plane.app import create_app
from control_plane.crypto import SecretBox
from control_plane.db.whatsapp_config import whatsapp_config
from tests.conftest import SECRET_KEY
from tests.support import wait_for


def stored_hash(sync_engine, tenant_id: str) -> str:
    with sync_engine.connect() as conn:
        return conn.execute(
            sa.select(whatsapp_config.c.verify_token_hash).where(whatsapp_config.c.tenant_id == tenant_id)
        ).scalar_one()


async def handshake(app_client, token: str) -> int:
    params = {"hub.mode": "subscribe", "hub.challenge": "4242", "hub.verify_token": token}
    resp = await app_client.get("/api/whatsapp/webhook", params=params)
    assert resp.status != 200 or await resp.text() == "4242"
    return resp.status


def test_keyed_hash_is_an_hmac_under_the_secret_key():
    box = SecretBox(SECRET_KEY)
    digest = box.keyed_hash("verify-me-please")
    assert len(digest) == 64 and digest != hashlib.sha256(b"verify-me-please").hexdigest()
    assert digest == box.keyed_hash("verify-me-please")  # deterministic: rows are found by it
    assert digest != SecretBox(SECRET_KEY + "-other").keyed_hash("verify-me-please")
    key = hashlib.sha256(b"whatsapp-gateway:keyed-hash:" + SECRET_KEY.encode()).digest()
    assert digest == hmac.new(key, b"verify-me-please", hashlib.sha256).hexdigest()


@pytest.mark.smoke
async def test_the_row_holds_the_hmac_and_the_handshake_finds_it(app_client, business_tenant, sync_engine):
    tenant = await business_tenant()
    row_hash = stored_hash(sync_engine, tenant["id"])
    assert row_hash == SecretBox(SECRET_KEY).keyed_hash(tenant["verify_token"])
    assert row_hash != hashlib.sha256(tenant["verify_token"].encode()).hexdigest()  # before: this
    assert await handshake(app_client, tenant["verify_token"]) == 200
    assert await handshake(app_client, "not-the-verify-token") == 403


@pytest.mark.smoke
async def test_a_sha256_row_from_before_is_upgraded_at_start(
    aiohttp_client, make_settings, fake, app_client, business_tenant, sync_engine
):
    tenant = await business_tenant()
    other = await business_tenant()
    old = hashlib.sha256(tenant["verify_token"].encode()).hexdigest()
    with sync_engine.begin() as conn:  # as an older release stored it
        conn.execute(
            whatsapp_config.update()
            .where(whatsapp_config.c.tenant_id == tenant["id"])
            .values(verify_token_hash=old)
        )
    restarted = await aiohttp_client(create_app(make_settings(GRAPH_API_URL=fake.url)))
    wanted = SecretBox(SECRET_KEY).keyed_hash(tenant["verify_token"])
    await wait_for(lambda: stored_hash(sync_engine, tenant["id"]) == wanted, message="the upgraded hash")
    assert stored_hash(sync_engine, other["id"]) == SecretBox(SECRET_KEY).keyed_hash(other["verify_token"])
    assert await handshake(restarted, tenant["verify_token"]) == 200
    assert await handshake(restarted, other["verify_token"]) == 200
