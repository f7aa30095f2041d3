"""The real app (every cleanup context) wired to a fake Graph API, and Business API tenants made
through the public API. ``published(tenant_id)`` reads what the app published to the event log."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.app import create_app
from tests.conftest import ADMIN_TOKEN
from tests.fakes import graph_api as g
from tests.fakes.graph_api import FakeGraphAPI

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def fake():
    async with FakeGraphAPI() as f:
        yield f


@pytest.fixture
async def app_client(aiohttp_client, make_settings, fake, empty_db):
    return await aiohttp_client(create_app(make_settings(GRAPH_API_URL=fake.url)))


@pytest.fixture
def webhook_url(app_client) -> str:
    return str(app_client.make_url("/api/whatsapp/webhook"))


@pytest.fixture
def business_tenant(app_client, fake):
    """Create a tenant with a Business API number registered at the fake; returns its facts."""

    async def make(
        *,
        app_secret: str | None = None,
        verify_token: str | None = None,
        pnid: str | None = None,
        waba: str | None = None,
    ) -> dict[str, Any]:
        resp = await app_client.post(
            "/api/tenants", json={"name": f"biz-{secrets.token_hex(3)}"}, headers=ADMIN
        )
        assert resp.status == 201, await resp.text()
        tenant = await resp.json()
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}
        pnid = pnid or str(10**14 + secrets.randbelow(10**14))
        waba = waba or str(10**14 + secrets.randbelow(10**14))
        token = "EAAG-" + secrets.token_hex(12)
        app_secret = app_secret or "secret-" + secrets.token_hex(8)
        verify_token = verify_token or "verify-" + secrets.token_hex(8)
        fake.add_number(pnid, waba, token)
        resp = await app_client.post(
            "/api/whatsapp/config",
            headers=headers,
            json={
                "api_type": "business_api",
                "fallback_policy": "business_api_only",
                "phone_number_id": pnid,
                "waba_id": waba,
                "access_token": token,
                "app_secret": app_secret,
                "verify_token": verify_token,
            },
        )
        assert resp.status == 201, await resp.text()
        return {
            "id": tenant["id"],
            "headers": headers,
            "pnid": pnid,
            "waba": waba,
            "token": token,
            "app_secret": app_secret,
            "verify_token": verify_token,
        }

    return make


@pytest.fixture
def sender(fake, webhook_url):
    senders: list[g.WebhookSender] = []

    def make(tenant: dict[str, Any]) -> g.WebhookSender:
        s = fake.webhooks(webhook_url, tenant["app_secret"])
        senders.append(s)
        return s

    return make


@pytest.fixture
def db_rows(sync_engine):
    def rows(sql: str, **params: Any) -> list[dict[str, Any]]:
        with sync_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    return rows


@pytest.fixture
def published(db_rows):
    """The tenant's events in the event log (what app['events'] made durable), oldest first."""

    def events(tenant_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        rows = db_rows("SELECT seq, type, data FROM event_log WHERE tenant_id = :t ORDER BY seq", t=tenant_id)
        out = [{"seq": r["seq"], "type": r["type"], "data": json.loads(r["data"])} for r in rows]
        return [e for e in out if type_ is None or e["type"] == type_]

    return events
