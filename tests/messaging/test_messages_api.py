"""POST /api/messages end to end: validation, both roads, fallback, the 24 h window, idempotency,
retries, isolation. Real app, real MariaDB, real scripted bridges, the fake Graph API."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.fakes.graph_api import FakeGraphAPI
from tests.messaging.conftest import (
    configure_business,
    create_tenant,
    get_message,
    open_window,
    ready_sandbox,
    send,
    wait_status,
)
from tests.support import wait_for

WA = "16505551234"


@pytest.mark.smoke
async def test_clear_4xx_for_bad_requests(app_client):
    tenant = await create_tenant(app_client)
    cases = [
        ({"to": "12ab", "text": "hi"}, 422, "invalid_number", "to"),
        ({"to": "+1 650", "text": "hi"}, 422, "invalid_number", "to"),
        ({"text": "x" * 4097}, 422, "too_long", "text"),
        ({"type": "text"}, 422, "missing_field", "text"),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "Pick"},
                    "action": {
                        "buttons": [
                            {"type": "reply", "reply": {"id": f"b{i}", "title": f"B{i}"}} for i in range(4)
                        ]
                    },
                },
            },
            422,
            "too_many_buttons",
            "interactive.action.buttons",
        ),
        ({"type": "template", "template": {"language": "en_US"}}, 422, "missing_field", "template.name"),
        (
            {"type": "template", "template": {"name": "order_update"}},
            422,
            "missing_field",
            "template.language",
        ),
        (
            {
                "type": "template",
                "template": {
                    "name": "t",
                    "language": "en_US",
                    "components": [{"type": "body", "parameters": [{"type": "text"}]}],
                },
            },
            422,
            "missing_field",
            "template.components.0.parameters.0.text",
        ),
        (
            {
                "type": "image",
                "media": {
                    "base64": base64.b64encode(b"x" * (5 * 1024 * 1024 + 1)).decode(),
                    "mime_type": "image/jpeg",
                },
            },
            413,
            "media_too_large",
            None,
        ),
        (
            {"type": "image", "media": {"url": "https://example.com/a.gif", "mime_type": "image/gif"}},
            422,
            "unsupported_media",
            "media.mime_type",
        ),
        (
            {"type": "sticker", "media": {"url": "https://example.com/s.webp", "size": 600 * 1024}},
            413,
            "media_too_large",
            None,
        ),
        (
            {"type": "video", "media": {"url": "https://example.com/v.mp4"}, "text": "x"},
            422,
            "invalid_field",
            "text",
        ),
        ({"text": "hi", "provider": "carrier-pigeon"}, 422, "invalid_field", "provider"),
    ]
    for body, status, code, field in cases:
        got, data = await send(app_client, tenant, **body)
        assert got == status, (body.get("type"), data)
        assert data["error"]["code"] == code, data
        if field:
            assert data["error"].get("field") == field, data
    resp = await app_client.post("/api/messages", data=b"{", headers=tenant["headers"])
    assert resp.status == 400
    # Nothing was stored for any of them.
    resp = await app_client.get("/api/conversations", headers=tenant["headers"])
    assert (await resp.json())["items"] == []


async def test_web_text_sent_then_delivered_and_read_from_acks(app_client):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    status, accepted = await send(app_client, tenant, text="Hello from the CRM")
    assert status == 202 and accepted["status"] == "queued", accepted
    msg = await wait_status(app_client, tenant, accepted["id"], "sent", "delivered")
    assert msg["provider"] == "web" and msg["provider_message_id"].startswith("true_")
    assert msg["route_reason"] == "policy web_only"
    pmid = msg["provider_message_id"]
    for ack, expected in (("delivered", "delivered"), ("read", "read")):
        resp = await app_client.post(
            "/api/sandbox/ack", json={"id": pmid, "status": ack}, headers=tenant["headers"]
        )
        assert resp.status == 200, await resp.text()
        msg = await wait_status(app_client, tenant, accepted["id"], expected)
    assert msg["delivered_at"] and msg["read_at"] and msg["sent_at"]
    history = [(t["source"], t["status"]) for t in msg["transitions"]]
    assert history[:3] == [("dispatcher", "queued"), ("dispatcher", "sending"), ("dispatcher", "sent")], (
        history
    )
    assert ("provider", "delivered") in history and ("provider", "read") in history
    # Events: message.sent, then message.status delivered/read, same shapes as the webhook's.
    resp = await app_client.get("/api/events", headers=tenant["headers"])
    events = [
        (e["type"], e["data"].get("status"))
        for e in (await resp.json())["events"]
        if e["type"].startswith("message.")
    ]
    assert ("message.sent", "sent") in events and ("message.status", "read") in events, events
    sent_event = next(
        e
        for e in (await (await app_client.get("/api/events", headers=tenant["headers"])).json())["events"]
        if e["type"] == "message.sent"
    )["data"]
    assert sent_event["message_id"] == accepted["id"] and sent_event["provider"] == "web"
    assert sent_event["provider_message_id"] == pmid and sent_event["to"] == WA
    assert sent_event["direction"] == "outbound" and sent_event["route_reason"] == "policy web_only"


async def test_inbound_web_message_then_fallback_to_cloud_when_session_down(app_client, fake: FakeGraphAPI):
    tenant = await create_tenant(app_client, sandbox=True)
    await configure_business(app_client, fake, tenant, api_type="both", policy="web_first")
    await ready_sandbox(app_client, tenant)
    # The contact writes on WhatsApp Web: same tables and events as a Cloud inbound message.
    resp = await app_client.post(
        "/api/sandbox/incoming",
        json={"from": "+1 650 555 1234", "text": "Hi there", "notify_name": "Sheena"},
        headers=tenant["headers"],
    )
    assert resp.status == 200, await resp.text()

    async def conversations():
        r = await app_client.get("/api/conversations", headers=tenant["headers"])
        return (await r.json())["items"]

    await wait_for(lambda: _nonempty(conversations), timeout=10, message="inbound stored")
    (conv,) = await conversations()
    assert conv["wa_id"] == WA and conv["unread_count"] == 1 and conv["provider"] == "web"
    assert conv["window_open"] and conv["window_open_until"] and conv["contact_name"] == "Sheena"
    assert conv["last_message"]["content"] == {"text": "Hi there"}
    fake.open_window(tenant["pnid"], WA)

    resp = await app_client.post("/api/session/stop", headers=tenant["headers"])
    assert resp.status in (200, 202), await resp.text()
    status, accepted = await send(app_client, tenant, text="We are on it")
    assert status == 202
    msg = await wait_status(app_client, tenant, accepted["id"], "sent")
    assert msg["provider"] == "business_api" and msg["provider_message_id"].startswith("wamid.")
    assert msg["route_reason"].startswith("fallback to business_api: session not ready"), msg["route_reason"]
    (record,) = fake.sent_to(WA)
    assert (
        record["biz_opaque_callback_data"] == accepted["id"] and record["payload"]["body"] == "We are on it"
    )

    # Mark read goes to the road that carried the conversation's inbound message (the Web session, down).
    resp = await app_client.post(f"/api/conversations/{conv['id']}/read", headers=tenant["headers"])
    body = await resp.json()
    assert resp.status == 200 and body["provider"] == "web" and body["forwarded"] is False and body["error"]
    (conv,) = await conversations()
    assert conv["unread_count"] == 0

    # Paginated history of the conversation, newest first.
    resp = await app_client.get(
        f"/api/conversations/{conv['id']}/messages?limit=1", headers=tenant["headers"]
    )
    page = await resp.json()
    assert [m["id"] for m in page["items"]] == [accepted["id"]] and page["next_cursor"]
    resp = await app_client.get(
        f"/api/conversations/{conv['id']}/messages?limit=1&cursor={page['next_cursor']}",
        headers=tenant["headers"],
    )
    page2 = await resp.json()
    assert page2["items"][0]["direction"] == "inbound" and page2["next_cursor"] is None


async def _nonempty(getter) -> bool:
    return bool(await getter())


@pytest.mark.smoke
async def test_outside_window_free_form_fails_clearly_unless_fallback_template(app_client, fake, db_exec):
    tenant = await create_tenant(app_client)
    await configure_business(app_client, fake, tenant, api_type="business_api", policy="business_api_only")
    status, accepted = await send(app_client, tenant, text="Your order shipped")
    assert status == 202
    msg = await wait_status(app_client, tenant, accepted["id"], "failed")
    assert msg["error"]["code"] == "outside_window" and "24 h" in msg["error"]["message"], msg["error"]
    assert fake.sent_count() == 0
    # A template is fine outside the window.
    fake.add_template(tenant["waba"], "order_update", "en_US", body_params=1)
    status, tpl = await send(
        app_client,
        tenant,
        type="template",
        template={
            "name": "order_update",
            "language": "en_US",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
        },
    )
    assert status == 202
    await wait_status(app_client, tenant, tpl["id"], "sent")
    # With a fallback template configured, free-form text goes out as that template.
    resp = await app_client.put(
        "/api/messaging/settings",
        headers=tenant["headers"],
        json={"fallback_template": {"name": "order_update", "language": "en_US", "body_param": True}},
    )
    assert resp.status == 200, await resp.text()
    status, again = await send(app_client, tenant, to="+16505550000", text="Back in stock")
    msg = await wait_status(app_client, tenant, again["id"], "sent", "failed")
    assert msg["status"] == "sent", msg
    assert "fallback template order_update" in msg["route_reason"]
    last = fake.sent_to("16505550000")[-1]
    assert (
        last["type"] == "template"
        and last["payload"]["components"][0]["parameters"][0]["text"] == "Back in stock"
    )
    # Inside the window free-form text goes as text.
    open_window(db_exec, tenant["id"], "16505551234")
    fake.open_window(tenant["pnid"], "16505551234")
    status, inside = await send(app_client, tenant, text="Thanks for writing")
    msg = await wait_status(app_client, tenant, inside["id"], "sent")
    assert fake.sent_to("16505551234")[-1]["type"] == "text"


async def test_idempotency_key_replayed_sends_once(app_client, fake, db_exec):
    tenant = await create_tenant(app_client)
    await configure_business(app_client, fake, tenant, api_type="business_api", policy="business_api_only")
    fake.set_delay(0.2, times=1)  # the first send is slow: replays arrive while it is in flight
    fake.add_template(tenant["waba"], "hello", "en_US")
    body = {
        "type": "template",
        "template": {"name": "hello", "language": "en_US"},
        "idempotency_key": "order-42",
    }
    results = await asyncio.gather(*(send(app_client, tenant, **body) for _ in range(10)))
    ids = {r[1]["id"] for r in results}
    assert all(r[0] == 202 for r in results) and len(ids) == 1, results
    (mid,) = ids
    await wait_status(app_client, tenant, mid, "sent")
    status, replay = await send(app_client, tenant, **body)
    assert status == 202 and replay["id"] == mid and replay["duplicate"] and replay["status"] == "sent"
    headers = {**tenant["headers"], "Idempotency-Key": "order-42"}
    resp = await app_client.post(
        "/api/messages",
        json={"to": "+1 650 555 1234", **{k: v for k, v in body.items() if k != "idempotency_key"}},
        headers=headers,
    )
    assert resp.status == 202 and (await resp.json())["id"] == mid
    status, clash = await send(
        app_client,
        tenant,
        type="template",
        template={"name": "hello", "language": "en"},
        idempotency_key="order-42",
    )
    assert status == 409 and clash["error"]["code"] == "idempotency_key_reused"
    await asyncio.sleep(0)  # nothing else is queued: the one message went out once
    assert fake.sent_count() == 1
    msg = await get_message(app_client, tenant, mid)
    assert msg["idempotency_key"] == "order-42" and msg["attempts"] == 1


@pytest.mark.smoke
async def test_throughput_error_130429_is_retried_and_sent(app_client, fake):
    tenant = await create_tenant(app_client)
    await configure_business(app_client, fake, tenant, api_type="business_api", policy="business_api_only")
    fake.add_template(tenant["waba"], "hello", "en_US")
    fake.inject_error(130429, times=2)
    _status, accepted = await send(
        app_client, tenant, type="template", template={"name": "hello", "language": "en_US"}
    )
    msg = await wait_status(app_client, tenant, accepted["id"], "sent", "failed", within_s=20)
    assert msg["status"] == "sent", msg
    assert fake.sent_count() == 1 and msg["attempts"] == 3
    retries = [t for t in msg["transitions"] if t["error"] and t["error"]["code"] == "130429"]
    assert len(retries) == 2 and all(t["status"] == "queued" for t in retries)
    # A non-retryable error fails at once with the provider's code and message.
    fake.inject_error(131026, times=1)
    _status, bad = await send(
        app_client, tenant, type="template", template={"name": "hello", "language": "en_US"}
    )
    msg = await wait_status(app_client, tenant, bad["id"], "failed")
    assert msg["error"]["code"] == "131026" and msg["attempts"] == 1
    resp = await app_client.get("/api/events", headers=tenant["headers"])
    failed = [e["data"] for e in (await resp.json())["events"] if e["type"] == "message.failed"]
    assert failed and failed[-1]["message_id"] == bad["id"] and failed[-1]["error"]["code"] == "131026"


async def test_tenant_isolation(app_client, fake, db_exec):
    a = await create_tenant(app_client)
    b = await create_tenant(app_client)
    for t in (a, b):
        await configure_business(app_client, fake, t, api_type="business_api", policy="business_api_only")
    _, mb = await send(app_client, b, text="for B's customer")
    _, ma = await send(app_client, a, text="for A's customer", to="+44 20 7946 0000")
    resp = await app_client.get(f"/api/messages/{mb['id']}", headers=a["headers"])
    assert resp.status == 404
    for path in (f"/api/conversations/{mb['conversation_id']}/messages",):
        resp = await app_client.get(path, headers=a["headers"])
        assert resp.status == 404
    resp = await app_client.post(f"/api/conversations/{mb['conversation_id']}/read", headers=a["headers"])
    assert resp.status == 404
    resp = await app_client.get("/api/conversations", headers=a["headers"])
    assert [c["id"] for c in (await resp.json())["items"]] == [ma["conversation_id"]]
    # The same idempotency key in two tenants names two messages.
    _, ka = await send(app_client, a, text="x", idempotency_key="same")
    _, kb = await send(app_client, b, text="x", idempotency_key="same")
    assert ka["id"] != kb["id"]
    for bad in ("nothex", "0" * 32):
        resp = await app_client.get(f"/api/messages/{bad}", headers=a["headers"])
        assert resp.status == 404
    resp = await app_client.get("/api/conversations/abc/messages", headers=a["headers"])
    assert resp.status == 404


@pytest.mark.smoke
async def test_conversation_takes_the_canonical_wa_id_the_cloud_api_answers(app_client, fake):
    tenant = await create_tenant(app_client)
    await configure_business(app_client, fake, tenant, api_type="business_api", policy="business_api_only")
    fake.add_template(tenant["waba"], "hello", "en_US")
    fake.set_wa_id("5511912345678", "551112345678")  # Brazil: the 9th digit is not in the account's id
    template = {"name": "hello", "language": "en_US"}

    async def conversation_ids() -> dict[str, int]:
        r = await app_client.get("/api/conversations", headers=tenant["headers"])
        return {c["wa_id"]: c["id"] for c in (await r.json())["items"]}

    _, first = await send(app_client, tenant, to="+55 11 91234-5678", type="template", template=template)
    assert (await wait_status(app_client, tenant, first["id"], "sent"))["status"] == "sent"
    await wait_for(
        lambda: _has(conversation_ids, "551112345678"), timeout=10, message="canonical wa_id adopted"
    )
    ids = await conversation_ids()
    assert list(ids) == ["551112345678"]  # the same conversation, renamed: replies from that id land in it
    # Another conversation already holds the canonical id: both are kept, the send is unaffected.
    fake.set_wa_id("5511987654321", "551187654321")
    _, other = await send(app_client, tenant, to="+55 11 8765-4321", type="template", template=template)
    await wait_status(app_client, tenant, other["id"], "sent")
    _, third = await send(app_client, tenant, to="+55 11 98765-4321", type="template", template=template)
    assert (await wait_status(app_client, tenant, third["id"], "sent"))["status"] == "sent"
    assert set(await conversation_ids()) == {"551112345678", "551187654321", "5511987654321"}


async def _has(getter, key) -> bool:
    return key in await getter()
