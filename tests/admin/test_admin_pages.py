"""Admin pages over HTTP (no browser): escaping, missing tenants, no supervisor, nothing from another
origin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from control_plane.admin import views
from control_plane.app import create_app
from tests.admin.test_admin_auth import login

EVIL = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
ADMIN_DIR = Path(views.__file__).resolve().parent


@pytest.mark.smoke
async def test_names_are_escaped_in_html_and_in_page_data(client, make_tenant):
    tenant = await make_tenant(EVIL, sandbox=True)
    await login(client)
    listing = await (await client.get("/admin/tenants")).text()
    assert EVIL not in listing and "&lt;/script&gt;&lt;script&gt;" in listing
    page = await (await client.get(f"/admin/tenants/{tenant['id']}")).text()
    assert EVIL not in page
    data = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.DOTALL).group(
        1
    )
    assert json.loads(data)["tenant"]["name"] == EVIL  # intact for the script, inert for the parser


@pytest.mark.smoke
async def test_unknown_tenant_page_is_a_clear_404(client):
    await login(client)
    for tenant_id in ("0" * 32, "..%2F..%2Fetc", "x"):
        resp = await client.get(f"/admin/tenants/{tenant_id}")
        assert resp.status == 404
        assert "There is no tenant" in await resp.text()


@pytest.mark.smoke
async def test_pages_render_without_a_supervisor(aiohttp_client, make_settings, empty_db):
    http = await aiohttp_client(create_app(make_settings(SUPERVISOR_ENABLED="false")))
    await login(http)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', await (await http.get("/admin/tenants")).text())
    created = await http.post(
        "/api/tenants", json={"name": "no sessions"}, headers={"X-CSRF-Token": csrf.group(1)}
    )
    tenant = await created.json()
    page = await http.get(f"/admin/tenants/{tenant['id']}")
    assert page.status == 200
    assert 'data-state="unknown"' in await page.text()


@pytest.mark.smoke
async def test_static_files_are_served_and_nothing_comes_from_another_origin(client):
    for name in (
        "admin.css",
        "admin.js",
        "tenants.js",
        "tenant.js",
        "favicon.svg",
        "vendor/socket.io.min.js",
    ):
        resp = await client.get(f"/admin/static/{name}")
        assert resp.status == 200, name
    head = (ADMIN_DIR / "static" / "vendor" / "socket.io.min.js").read_text()[:200]
    assert "Socket.IO v4.8.4" in head
    own = [
        p for p in ADMIN_DIR.rglob("*") if p.suffix in {".html", ".js", ".css"} and "vendor" not in p.parts
    ]
    for path in own:
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", path.read_text()), path
        assert "cdn" not in path.read_text().lower(), path
    await login(client)
    page = await client.get("/admin/tenants")
    assert not re.search(r"(src|href)=\"(https?:)?//", await page.text())
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
