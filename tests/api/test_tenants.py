"""Tenants and API keys: admin CRUD, keys shown once, revocation and rotation take effect at once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.smoke


async def test_create_tenant_returns_key_once_and_stores_only_its_hash(client, admin_headers, sync_engine):
    resp = await client.post("/api/tenants", json={"name": "Acme", "sandbox": True}, headers=admin_headers)
    assert resp.status == 201
    body = await resp.json()
    assert body["name"] == "Acme" and body["sandbox"] is True and body["is_active"] is True
    assert len(body["id"]) == 32 and body["api_key"].startswith("wgk_") and len(body["api_key"]) >= 40
    with sync_engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT key_hash, prefix FROM api_keys WHERE tenant_id = :t"), {"t": body["id"]}
        ).one()
    assert body["api_key"] not in stored.key_hash and len(stored.key_hash) == 64
    got = await (await client.get(f"/api/tenants/{body['id']}", headers=admin_headers)).json()
    assert "api_key" not in got


async def test_admin_routes_refuse_missing_wrong_and_tenant_credentials(client, make_tenant):
    tenant = await make_tenant()
    assert (await client.get("/api/tenants")).status == 401
    resp = await client.get("/api/tenants", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_credentials"
    resp = await client.get("/api/tenants", headers=tenant["headers"])
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "admin_required"


async def test_list_update_and_deactivate(client, admin_headers, make_tenant):
    a, b = await make_tenant("a"), await make_tenant("b")
    listed = await (await client.get("/api/tenants", headers=admin_headers)).json()
    assert {t["id"] for t in listed["tenants"]} == {a["id"], b["id"]}
    resp = await client.patch(
        f"/api/tenants/{a['id']}", json={"name": "renamed", "is_active": False}, headers=admin_headers
    )
    assert resp.status == 200
    assert (await resp.json())["name"] == "renamed"
    resp = await client.get("/api/me", headers=a["headers"])
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "tenant_inactive"
    assert (await client.get("/api/me", headers=b["headers"])).status == 200
    await client.patch(f"/api/tenants/{a['id']}", json={"is_active": True}, headers=admin_headers)
    assert (await client.get("/api/me", headers=a["headers"])).status == 200


async def test_delete_removes_rows(client, admin_headers, make_tenant, sync_engine):
    tenant = await make_tenant()
    await client.put("/api/whatsapp/config", json={"api_type": "web"}, headers=tenant["headers"])
    resp = await client.delete(f"/api/tenants/{tenant['id']}", headers=admin_headers)
    assert resp.status == 204
    assert (await client.get(f"/api/tenants/{tenant['id']}", headers=admin_headers)).status == 404
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 401
    with sync_engine.connect() as conn:
        for table in ("api_keys", "whatsapp_config"):
            n = conn.execute(
                sa.text(f"SELECT COUNT(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant["id"]}
            )
            assert n.scalar() == 0, table
    assert (await client.delete(f"/api/tenants/{tenant['id']}", headers=admin_headers)).status == 404


async def test_revoked_key_stops_working_at_once(client, admin_headers, make_tenant):
    tenant = await make_tenant()
    keys = await (await client.get(f"/api/tenants/{tenant['id']}/api-keys", headers=admin_headers)).json()
    key_id = keys["api_keys"][0]["id"]
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 200
    resp = await client.delete(f"/api/tenants/{tenant['id']}/api-keys/{key_id}", headers=admin_headers)
    assert resp.status == 204
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 401
    resp = await client.delete(f"/api/tenants/{tenant['id']}/api-keys/999999", headers=admin_headers)
    assert resp.status == 404


async def test_rotation_revokes_old_keys_and_issues_a_working_one(client, admin_headers, make_tenant):
    tenant = await make_tenant()
    extra = await (
        await client.post(
            f"/api/tenants/{tenant['id']}/api-keys", json={"label": "crm"}, headers=admin_headers
        )
    ).json()
    extra_headers = {"Authorization": f"Bearer {extra['api_key']}"}
    assert (await client.get("/api/me", headers=extra_headers)).status == 200
    resp = await client.post(f"/api/tenants/{tenant['id']}/api-keys/rotate", json={}, headers=admin_headers)
    assert resp.status == 201
    new = await resp.json()
    assert (await client.get("/api/me", headers=tenant["headers"])).status == 401
    assert (await client.get("/api/me", headers=extra_headers)).status == 401
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {new['api_key']}"})
    assert me.status == 200 and (await me.json())["id"] == tenant["id"]


async def test_another_tenants_objects_are_404(client, admin_headers, make_tenant):
    a, b = await make_tenant("a"), await make_tenant("b")
    # B's key cannot reach A's admin-scoped objects (admin token needed) nor learn they exist.
    for path in (f"/api/tenants/{a['id']}", f"/api/tenants/{a['id']}/whatsapp/config"):
        resp = await client.get(path, headers=b["headers"])
        assert resp.status in (403, 404)
    # A's own config through its key is its own; the admin mirror for a missing tenant is 404.
    resp = await client.get(f"/api/tenants/{'0' * 32}/whatsapp/config", headers=admin_headers)
    assert resp.status == 404
    resp = await client.get("/api/tenants/../../etc/passwd/whatsapp/config", headers=admin_headers)
    assert resp.status == 404
