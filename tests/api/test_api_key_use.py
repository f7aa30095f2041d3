"""API keys: when each was last used (written at most once a minute per key), listed per tenant only."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from control_plane.db import Database
from control_plane.db import tenants as tenants_db

pytestmark = pytest.mark.smoke


async def _keys(client, admin_headers, tenant_id: str) -> list[dict]:
    resp = await client.get(f"/api/tenants/{tenant_id}/api-keys", headers=admin_headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["api_keys"]


async def test_last_used_is_null_until_used_then_set_once_a_minute(
    client, admin_headers, make_tenant, sync_engine
):
    tenant = await make_tenant()
    [key] = await _keys(client, admin_headers, tenant["id"])
    assert key["last_used_at"] is None and key["prefix"] and key["created_at"]
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 200
    [key] = await _keys(client, admin_headers, tenant["id"])
    first = key["last_used_at"]
    assert first is not None and first.endswith("Z")
    # more uses within the minute write nothing
    for _ in range(3):
        assert (await client.get("/api/me", headers=tenant["headers"])).status == 200
    [key] = await _keys(client, admin_headers, tenant["id"])
    assert key["last_used_at"] == first
    # a use stored two minutes ago is old enough: the next request writes it again
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=2)
    with sync_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_keys SET last_used_at = :t WHERE id = :id"), {"t": old, "id": key["id"]}
        )
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 200
    [key] = await _keys(client, admin_headers, tenant["id"])
    assert key["last_used_at"] > old.isoformat()


async def test_note_use_writes_only_when_stale(database_url, empty_db):
    db = Database(database_url)
    try:
        async with db.begin() as conn:
            tenant = await tenants_db.create_tenant(conn, "t")
            _, key = await tenants_db.create_api_key(conn, tenant["id"])
        now = dt.datetime(2026, 1, 1, 12, 0, 0)
        async with db.begin() as conn:
            assert await tenants_db.note_api_key_use(conn, tenant["id"], key["id"], now)
            assert not await tenants_db.note_api_key_use(
                conn, tenant["id"], key["id"], now + dt.timedelta(seconds=59)
            )
            assert await tenants_db.note_api_key_use(
                conn, tenant["id"], key["id"], now + dt.timedelta(seconds=60)
            )
            # another tenant's id never touches the key
            assert not await tenants_db.note_api_key_use(
                conn, "0" * 32, key["id"], now + dt.timedelta(hours=1)
            )
    finally:
        await db.close()
    assert tenants_db.api_key_use_is_stale(None, now)
    assert not tenants_db.api_key_use_is_stale(now, now + dt.timedelta(seconds=30))


async def test_keys_are_listed_created_and_revoked_per_tenant_only(client, admin_headers, make_tenant):
    a, b = await make_tenant("a"), await make_tenant("b")
    created = await client.post(
        f"/api/tenants/{a['id']}/api-keys", json={"label": "crm"}, headers=admin_headers
    )
    assert created.status == 201
    key = await created.json()
    assert key["api_key"].startswith(key["prefix"]) and key["last_used_at"] is None
    assert [k["label"] for k in await _keys(client, admin_headers, b["id"])] == ["initial"]
    # b's path never reaches a's key
    resp = await client.delete(f"/api/tenants/{b['id']}/api-keys/{key['id']}", headers=admin_headers)
    assert resp.status == 404
    resp = await client.delete(f"/api/tenants/{a['id']}/api-keys/{key['id']}", headers=admin_headers)
    assert resp.status == 204
    listed = {k["id"]: k for k in await _keys(client, admin_headers, a["id"])}
    assert listed[key["id"]]["revoked_at"] is not None
    # a tenant's own key cannot manage keys (admin routes)
    assert (await client.get(f"/api/tenants/{a['id']}/api-keys", headers=a["headers"])).status == 403
