"""Messages typed on the phone itself (bridge ``message`` with ``from_me``): stored as outbound rows in
the contact's conversation and published as ``message.sent`` with ``origin: "phone"``; acks move them
like any outbound message; a message the gateway sent itself is never stored twice. Real app, real
MariaDB, real scripted bridges."""

from __future__ import annotations

from control_plane.messaging.web_ingest import inbound_item
from tests.messaging.conftest import create_tenant, get_message, ready_sandbox, send, wait_status
from tests.support import wait_for

WA = "16505551234"


async def _events(http, tenant, type_: str) -> list[dict]:
    resp = await http.get("/api/events", headers=tenant["headers"])
    return [e["data"] for e in (await resp.json())["events"] if e["type"] == type_]


async def _conversation_messages(http, tenant) -> list[dict]:
    resp = await http.get("/api/conversations", headers=tenant["headers"])
    convs = (await resp.json())["items"]
    if not convs:
        return []
    (conv,) = convs
    resp = await http.get(f"/api/conversations/{conv['id']}/messages", headers=tenant["headers"])
    return (await resp.json())["items"]


def test_from_me_item_shape():
    data = {
        "id": "true_16505551234@c.us_AB",
        "chat_id": "16505551234@c.us",
        "from": "15550001111@c.us",
        "to": "16505551234@c.us",
        "from_me": True,
        "type": "chat",
        "body": "hi",
        "timestamp": 1700000000,
    }
    item = inbound_item(data)
    assert item["from_me"] is True and item["wa_id"] == WA and item["from"] == "15550001111"
    assert item["type"] == "text" and item["content"] == {"text": "hi"}
    assert inbound_item({**data, "to": "status@broadcast", "chat_id": "status@broadcast"}) is None


async def test_phone_typed_message_stored_published_and_acked(app_client):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    session = await (await app_client.get("/api/session", headers=tenant["headers"])).json()
    resp = await app_client.post(
        "/api/sandbox/outgoing",
        headers=tenant["headers"],
        json={"to": "+1 650 555 1234", "text": "typed on the phone"},
    )
    assert resp.status == 200, await resp.text()
    pmid = (await resp.json())["id"]

    async def stored() -> bool:
        return bool(await _conversation_messages(app_client, tenant))

    await wait_for(stored, timeout=10, message="phone message stored")
    (row,) = await _conversation_messages(app_client, tenant)
    assert row["direction"] == "outbound" and row["provider"] == "web" and row["provider_message_id"] == pmid
    assert row["status"] == "sent" and row["type"] == "text"
    assert row["content"] == {"text": "typed on the phone"}
    resp = await app_client.get("/api/conversations", headers=tenant["headers"])
    (conv,) = (await resp.json())["items"]
    assert conv["wa_id"] == WA and conv["unread_count"] == 0 and not conv["window_open"]
    assert conv["last_message"]["id"] == row["id"]

    (event,) = await _events(app_client, tenant, "message.sent")
    assert event["origin"] == "phone" and event["direction"] == "outbound" and event["status"] == "sent"
    assert event["message_id"] == row["id"] and event["provider_message_id"] == pmid
    assert event["to"] == WA and event["from"] == session["own_number"]
    assert event["content"] == {"text": "typed on the phone"} and event["conversation_id"] == conv["id"]

    # Acks move it like any outbound message.
    for ack in ("delivered", "read"):
        resp = await app_client.post(
            "/api/sandbox/ack", json={"id": pmid, "status": ack}, headers=tenant["headers"]
        )
        assert resp.status == 200, await resp.text()
        msg = await wait_status(app_client, tenant, row["id"], ack)
    assert msg["read_at"] and msg["delivered_at"] and msg["sent_at"]
    statuses = [
        e["status"]
        for e in await _events(app_client, tenant, "message.status")
        if e["message_id"] == row["id"]
    ]
    assert statuses == ["delivered", "read"], statuses


async def test_gateway_sent_message_is_not_stored_twice(app_client):
    """The scripted driver echoes each send like message_create (the bridge drops it); an echo that
    still reaches the control plane, or a repeated phone message, is idempotent on the Web id."""
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    status, accepted = await send(app_client, tenant, text="from the CRM")
    assert status == 202
    sent = await wait_status(app_client, tenant, accepted["id"], "sent")
    pmid = sent["provider_message_id"]
    ingest = app_client.server.app["dispatcher"].web_ingest
    echo = {
        "id": pmid,
        "chat_id": f"{WA}@c.us",
        "from": "15550001111@c.us",
        "to": f"{WA}@c.us",
        "from_me": True,
        "type": "chat",
        "body": "from the CRM",
        "timestamp": 1700000000,
    }
    await ingest(tenant["id"], "message", echo)
    await ingest(tenant["id"], "message", echo)
    assert await ingest.flush()
    resp = await app_client.post(
        "/api/sandbox/outgoing", json={"to": WA, "text": "phone"}, headers=tenant["headers"]
    )
    phone_id = (await resp.json())["id"]

    async def two() -> bool:
        return len(await _conversation_messages(app_client, tenant)) == 2

    await wait_for(two, timeout=10, message="phone message stored")
    phone_event = {**echo, "id": phone_id, "body": "phone"}
    await ingest(tenant["id"], "message", phone_event)  # the same phone message reported again
    assert await ingest.flush()
    rows = await _conversation_messages(app_client, tenant)
    assert sorted(r["provider_message_id"] for r in rows) == sorted([pmid, phone_id])
    assert (await get_message(app_client, tenant, accepted["id"]))["route_reason"] == "policy web_only"
    sent_events = await _events(app_client, tenant, "message.sent")
    assert [e["origin"] for e in sent_events] == ["api", "phone"], sent_events
    # The gateway's own message still gets its acks.
    resp = await app_client.post(
        "/api/sandbox/ack", json={"id": pmid, "status": "read"}, headers=tenant["headers"]
    )
    assert resp.status == 200
    await wait_status(app_client, tenant, accepted["id"], "read")
