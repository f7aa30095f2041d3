"""A tenant that owns one object of every kind a tenant can own, made through the public interfaces
(the admin API, the tenant API, Meta's signed webhooks, the sandbox session), and the strings that
are its alone (``markers``: none may ever show up in another tenant's answers or events).

``missing_kinds`` names every table with a ``tenant_id`` column in which the tenant has no row: the
cross-tenant matrix fails on it, so a new kind of object is added here before it can go unchecked.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import sqlalchemy as sa

from control_plane.db import metadata
from tests.conftest import ADMIN_TOKEN
from tests.fakes import graph_api as g
from tests.webhooks import change_samples
from tests.webhooks.samples import sample

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Owned:
    """One tenant's objects: ids by path parameter name, and its marker strings."""

    id: str
    key: str
    headers: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)
    app_secret: str = ""
    pnid: str = ""
    user: str = ""

    def leaked(self, text: str) -> list[str]:
        """The markers of this tenant found in ``text``."""
        return sorted(m for m in self.markers if m in text)


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json: Any = None,
    expect: int | tuple[int, ...] = 200,
) -> Any:
    async with http.request(method, url, headers=headers, json=json) as resp:
        text = await resp.text()
        expected = (expect,) if isinstance(expect, int) else expect
        assert resp.status in expected, f"{method} {url}: {resp.status} {text[:500]}"
        return await resp.json() if text else None


async def _until(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], pred: Any, what: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url, headers=headers) as resp:
            body = await resp.json() if resp.status == 200 else {}
        if body and pred(body):
            return body
        assert body.get("status") != "failed", f"{what}: failed {body}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {body}")
        await asyncio.sleep(0.1)


async def build_tenant(
    http: aiohttp.ClientSession,
    base: str,
    fake: g.FakeGraphAPI,
    name: str,
    *,
    session: bool = True,
) -> Owned:
    """A sandbox tenant with a Business API number too (api_type both), and one of everything:
    a second API key, the WhatsApp config, messaging settings, a synced template, an inbound message
    (its conversation, contact and event), an edit of it, a marketing opt-out (a kept provider
    event), an outbound message sent through the fake (outbox, transitions) and its delivered
    status, and (``session``) its sandbox Web session, scanned and ready."""
    tag = secrets.token_hex(6)
    tenant = await _call(
        http,
        "POST",
        f"{base}/api/tenants",
        headers=ADMIN,
        json={"name": f"{name}-{tag}", "sandbox": True},
        expect=201,
    )
    key = tenant["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    extra = await _call(
        http,
        "POST",
        f"{base}/api/tenants/{tenant['id']}/api-keys",
        headers=ADMIN,
        json={"label": f"crm-{tag}"},
        expect=201,
    )
    keys = await _call(http, "GET", f"{base}/api/tenants/{tenant['id']}/api-keys", headers=ADMIN)
    key_ids = [str(k["id"]) for k in keys["api_keys"]]

    pnid, waba = str(10**14 + secrets.randbelow(10**14)), str(10**14 + secrets.randbelow(10**14))
    token, app_secret = "EAAG-" + secrets.token_hex(12), "secret-" + secrets.token_hex(8)
    verify = "verify-" + secrets.token_hex(8)
    fake.add_number(pnid, waba, token)
    await _call(
        http,
        "POST",
        f"{base}/api/whatsapp/config",
        headers=headers,
        expect=201,
        json={
            "api_type": "both",
            "fallback_policy": "business_api_first",
            "phone_number_id": pnid,
            "waba_id": waba,
            "access_token": token,
            "app_secret": app_secret,
            "verify_token": verify,
        },
    )
    template = f"tpl_{tag}"
    fake.add_template(waba, template, "en_US")
    await _call(
        http,
        "PUT",
        f"{base}/api/messaging/settings",
        headers=headers,
        json={"fallback_template": {"name": template, "language": "en_US"}},
    )
    await _call(http, "POST", f"{base}/api/whatsapp/templates/sync", headers=headers)

    user = "1555" + str(1_000_000 + secrets.randbelow(8_999_999))
    send = fake.webhooks(f"{base}/api/whatsapp/webhook", app_secret)
    try:
        inbound_text = f"inbound secret of {name} {tag}"
        message = g.text_message(user, inbound_text)
        assert (await send.inbound(pnid, message, contact_name=f"Contact {tag}")).status == 200
        edit = {**change_samples.edit_text(message["id"], f"edited secret of {name} {tag}"), "from": user}
        assert (await send.inbound(pnid, edit)).status == 200
        assert (await send.send(sample("user_preferences_stop", waba=waba, pnid=pnid))).status == 200

        conversations = await _call(http, "GET", f"{base}/api/conversations", headers=headers)
        conversation = conversations["items"][0]
        history = await _call(
            http, "GET", f"{base}/api/conversations/{conversation['id']}/messages", headers=headers
        )
        inbound_id = history["items"][0]["id"]

        outbound_text = f"outbound secret of {name} {tag}"
        queued = await _call(
            http,
            "POST",
            f"{base}/api/messages",
            headers=headers,
            expect=202,
            json={"to": user, "text": outbound_text},
        )
        outbound_id = queued["id"]
        sent = await _until(
            http,
            f"{base}/api/messages/{outbound_id}",
            headers,
            lambda m: m["status"] in ("sent", "delivered", "read") and m["provider_message_id"],
            "the outbound message sent",
            30,
        )
        assert {d.status for d in await send.statuses(sent["provider_message_id"], ("delivered",))} == {200}
        await _until(
            http,
            f"{base}/api/messages/{outbound_id}",
            headers,
            lambda m: m["status"] == "delivered",
            "the delivered status",
            15,
        )
    finally:
        await send.close()

    own_number = None
    if session:
        await _call(http, "POST", f"{base}/api/session/start", headers=headers, expect=202)
        await _until(http, f"{base}/api/session", headers, lambda s: s["state"] == "qr", "the QR", 30)
        await _call(http, "POST", f"{base}/api/sandbox/scan", headers=headers)
        ready = await _until(
            http, f"{base}/api/session", headers, lambda s: s["state"] == "ready", "ready", 30
        )
        own_number = ready["own_number"]

    markers = {
        tenant["id"],
        key,
        extra["api_key"],
        pnid,
        waba,
        token,
        app_secret,
        verify,
        template,
        tag,
        inbound_text,
        outbound_text,
        message["id"],
        sent["provider_message_id"],
        inbound_id,
        outbound_id,
        user,
        f"Contact {tag}",
    }
    if own_number:
        markers.add(own_number)
    return Owned(
        id=tenant["id"],
        key=key,
        headers=headers,
        ids={
            "tenant_id": [tenant["id"]],
            "key_id": key_ids,
            "conversation_id": [str(conversation["id"])],
            "message_id": [inbound_id, outbound_id],
        },
        markers=markers,
        app_secret=app_secret,
        pnid=pnid,
        user=user,
    )


def missing_kinds(engine: sa.Engine, tenant_id: str) -> list[str]:
    """Every table with a ``tenant_id`` column holding no row of ``tenant_id``."""
    missing = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if "tenant_id" not in table.c:
                continue
            query = sa.select(sa.func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
            if not conn.execute(query).scalar():
                missing.append(table.name)
    return missing
