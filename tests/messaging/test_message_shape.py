"""One message shape: every message.* event the real flows publish, and every REST message object,
validate against the JSON Schema kept in the repo (control_plane/schemas/message.schema.json), which
the OpenAPI document publishes. Real app, real MariaDB, real scripted bridges, the fake Graph API."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from control_plane import events as ev
from control_plane.db import outbox as outbox_db
from control_plane.db import status_facts
from control_plane.db.engine import utcnow
from control_plane.messaging import outcomes
from control_plane.messaging.recorder import Recorder
from control_plane.statuses import MessageStatus
from tests.fakes import graph_api as g
from tests.messaging.conftest import (
    configure_business,
    conversation_history,
    create_tenant,
    get_message,
    ready_sandbox,
    send,
    wait_status,
)
from tests.support import wait_for

WA = "16505551234"
OTHER = "16505559876"
SCHEMA = ev.message_schema()
REGISTRY = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))
MESSAGE_TYPES = sorted(t for t in ev.ALL_TYPES if t.startswith("message."))
# What the REST object and the events of one message always agree on.
SAME_EVERYWHERE = ("message_id", "conversation_id", "direction", "origin", "type", "created_at", "author")


def _validator(name: str | None = None) -> jsonschema.Draft202012Validator:
    target = SCHEMA if name is None else {"$ref": f"{SCHEMA['$id']}#/$defs/{name}"}
    return jsonschema.Draft202012Validator(target, registry=REGISTRY)


def check_event(type_: str, data: dict[str, Any]) -> None:
    """``data`` is a valid payload of ``type_`` (every key present, nothing else)."""
    errors = sorted(_validator(ev.MESSAGE_EVENT_SCHEMAS[type_]).iter_errors(data), key=str)
    assert not errors, f"{type_} payload does not match the schema: {[e.message for e in errors]}\n{data}"


def check_rest(obj: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(obj), key=str)
    assert not errors, f"REST message does not match the schema: {[e.message for e in errors]}\n{obj}"
    assert obj["message_id"] == obj["id"]


async def _message_events(http, tenant) -> list[dict[str, Any]]:
    resp = await http.get("/api/events", params={"since": "0", "limit": "1000"}, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    return [e for e in (await resp.json())["events"] if e["type"].startswith("message.")]


async def _wait_events(http, tenant, want: list[tuple[str, str]], *, within_s: float = 15.0):
    """Wait until the event log holds each (type, status) of ``want``; returns its message events."""
    seen: list[dict[str, Any]] = []

    async def done() -> bool:
        seen[:] = await _message_events(http, tenant)
        have = [(e["type"], e["data"]["status"]) for e in seen]
        return all(have.count(w) >= want.count(w) for w in want)

    try:
        await wait_for(done, timeout=within_s, interval=0.05, message=f"events {want}")
    except AssertionError:
        raise AssertionError(
            f"events {want} not all published: {[(e['type'], e['data']) for e in seen]}"
        ) from None
    return seen


async def _check_everything(http, tenant, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every event payload against its type's schema, every REST message (history and one by one)
    against the message schema, and each message's REST object against its events."""
    for e in events:
        check_event(e["type"], e["data"])
    rest: dict[str, dict[str, Any]] = {}
    for conversation_id in sorted({e["data"]["conversation_id"] for e in events}):
        for item in await conversation_history(http, tenant, conversation_id):
            check_rest(item)
            one = await get_message(http, tenant, item["id"])
            check_rest(one)
            common = set(item) & set(one)
            assert {k: one[k] for k in common} == {k: item[k] for k in common}, (
                "history != GET /api/messages/{id}"
            )
            rest[item["id"]] = one
    for e in events:
        one = rest[e["data"]["message_id"]]
        for key in SAME_EVERYWHERE:
            assert e["data"][key] == one[key], (key, e, one)
    return rest


def _by(events, type_, **where) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in events
        if e["type"] == type_ and all(e["data"].get(k) == v for k, v in where.items())
    ]


@pytest.mark.smoke
async def test_cloud_api_flows_publish_the_one_shape(app_client, fake):
    """Webhook inbound, API sends to sent/delivered/read and to failed (Meta's status, and ours:
    outside the 24 h window), all on the Cloud API."""
    tenant = await create_tenant(app_client)
    await configure_business(app_client, fake, tenant, api_type="business_api", policy="business_api_only")
    webhooks = fake.webhooks(str(app_client.make_url("/api/whatsapp/webhook")), tenant["app_secret"])
    webhooks.fake = fake
    try:
        now = int(time.time())
        inbound = [
            g.text_message(WA, "Does it come in blue?", timestamp=now - 3),
            g.image_message(WA, caption="this one", timestamp=now - 2),
            g.location_message(WA, 38.7, -9.1, name="Lisboa", timestamp=now - 1),
        ]
        assert (await webhooks.inbound(tenant["pnid"], *inbound, contact_name="Sheena")).status == 200
        status, ok = await send(app_client, tenant, to=WA, text="Yes, in blue")
        assert status == 202, ok
        status, bad = await send(app_client, tenant, to=WA, text="One more thing")
        assert status == 202, bad
        status, outside = await send(app_client, tenant, to=OTHER, text="Nobody wrote to us")
        assert status == 202, outside
        ok_msg = await wait_status(app_client, tenant, ok["id"], "sent")
        bad_msg = await wait_status(app_client, tenant, bad["id"], "sent")
        await wait_status(app_client, tenant, outside["id"], "failed")
        for d in await webhooks.statuses(ok_msg["provider_message_id"], ("sent", "delivered", "read")):
            assert d.status == 200
        (failure,) = await webhooks.statuses(bad_msg["provider_message_id"], ("failed",))
        assert failure.status == 200
    finally:
        await webhooks.close()
    events = await _wait_events(
        app_client,
        tenant,
        [("message.received", "received")] * 3
        + [("message.sent", "sent")] * 2
        + [("message.status", "delivered"), ("message.status", "read")]
        + [("message.status", "failed"), ("message.failed", "failed")] * 2,
    )
    rest = await _check_everything(app_client, tenant, events)

    received = _by(events, "message.received")
    assert [r["type"] for r in received] == ["text", "image", "location"]
    assert all(r["from"] == WA and r["to"] == "15550783881" and r["origin"] == "contact" for r in received)
    assert received[0]["contact_name"] == "Sheena" and received[0]["content"] == {
        "text": "Does it come in blue?"
    }
    # Status events carry the message itself now: who, what, to whom (issue 14, "Shape").
    (read,) = _by(events, "message.status", status="read")
    assert (
        read["message_id"] == ok["id"]
        and read["type"] == "text"
        and read["content"]["text"] == "Yes, in blue"
    )
    assert read["from"] == "15550783881" and read["to"] == WA and read["contact_name"] == "Sheena"
    assert (
        read["origin"] == "api"
        and read["error"] is None
        and read["created_at"] == rest[ok["id"]]["created_at"]
    )
    (meta_failed,) = _by(events, "message.failed", message_id=bad["id"])
    assert meta_failed["error"]["code"] == "131047" and meta_failed["content"]["text"] == "One more thing"
    (ours_failed,) = _by(events, "message.failed", message_id=outside["id"])
    assert ours_failed["error"]["code"] == "outside_window" and ours_failed["provider_message_id"] is None
    assert ours_failed["type"] == "text" and ours_failed["to"] == OTHER and ours_failed["route_reason"]
    (sent,) = _by(events, "message.sent", message_id=ok["id"])
    assert sent["route_reason"] and sent["content"] == {"text": "Yes, in blue", "preview_url": False}
    assert rest[ok["id"]]["route_reason"] == sent["route_reason"] and rest[ok["id"]]["status"] == "read"


async def test_web_flows_publish_the_one_shape(app_client):
    """Sandbox (Web) inbound, a message typed on the phone, API sends to sent/delivered/read and to
    failed (ack -1), inline media bytes never echoed."""
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    session = await (await app_client.get("/api/session", headers=tenant["headers"])).json()
    own = session["own_number"]
    sandbox = {"headers": tenant["headers"]}
    resp = await app_client.post(
        "/api/sandbox/incoming", json={"from": WA, "text": "Hi", "notify_name": "Sheena"}, **sandbox
    )
    assert resp.status == 200, await resp.text()
    resp = await app_client.post(
        "/api/sandbox/incoming",
        json={"from": WA, "location": {"latitude": 38.7, "longitude": -9.1, "description": "Lisboa"}},
        **sandbox,
    )
    assert resp.status == 200, await resp.text()
    resp = await app_client.post("/api/sandbox/outgoing", json={"to": WA, "text": "typed here"}, **sandbox)
    assert resp.status == 200, await resp.text()
    phone_id = (await resp.json())["id"]
    status, ok = await send(app_client, tenant, to=WA, text="From the CRM")
    assert status == 202, ok
    picture = base64.b64encode(b"\xff\xd8\xff" + b"x" * 996).decode()  # 999 bytes: no padding
    status, bad = await send(
        app_client, tenant, to=WA, type="image", media={"base64": picture, "mime_type": "image/jpeg"}
    )
    assert status == 202, bad
    ok_msg = await wait_status(app_client, tenant, ok["id"], "sent", "delivered")
    bad_msg = await wait_status(app_client, tenant, bad["id"], "sent", "delivered")
    for pmid, ack in (
        (ok_msg["provider_message_id"], "delivered"),
        (ok_msg["provider_message_id"], "read"),
        (bad_msg["provider_message_id"], "error"),
        (phone_id, "delivered"),
    ):
        resp = await app_client.post("/api/sandbox/ack", json={"id": pmid, "status": ack}, **sandbox)
        assert resp.status == 200, await resp.text()
    events = await _wait_events(
        app_client,
        tenant,
        [("message.received", "received")] * 2
        + [("message.sent", "sent")] * 3
        + [("message.status", "delivered")] * 2
        + [("message.status", "read"), ("message.status", "failed"), ("message.failed", "failed")],
    )
    rest = await _check_everything(app_client, tenant, events)

    received = _by(events, "message.received")
    assert [r["type"] for r in received] == ["text", "location"]
    assert all(r["from"] == WA and r["to"] == own and r["provider"] == "web" for r in received)
    (phone,) = _by(events, "message.sent", origin="phone")
    assert phone["from"] == own and phone["to"] == WA and phone["route_reason"] == ev.PHONE_ROUTE_REASON
    (phone_ack,) = _by(events, "message.status", message_id=phone["message_id"])
    assert phone_ack["origin"] == "phone" and phone_ack["content"] == {"text": "typed here"}
    assert rest[phone["message_id"]]["origin"] == "phone"
    assert rest[phone["message_id"]]["route_reason"] == ev.PHONE_ROUTE_REASON
    (api_sent,) = _by(events, "message.sent", message_id=ok["id"])
    assert (
        api_sent["from"] == own
        and api_sent["origin"] == "api"
        and api_sent["route_reason"] == "policy web_only"
    )
    (read,) = _by(events, "message.status", status="read")
    assert read["from"] == own and read["to"] == WA and read["content"]["text"] == "From the CRM"
    (failed,) = _by(events, "message.failed")
    assert failed["message_id"] == bad["id"] and failed["error"]["code"] == "web_ack_error"
    assert failed["content"]["base64"] == "<999 bytes>" and failed["type"] == "image"
    for e in _by(events, "message.sent", message_id=bad["id"]):
        assert e["content"]["base64"] == "<999 bytes>"
    assert rest[bad["id"]]["content"]["base64"] == "<999 bytes>"
    inbound_rest = [m for m in rest.values() if m["direction"] == "inbound"]
    assert all(m["to"] == own and m["from"] == WA and m["contact_name"] == "Sheena" for m in inbound_rest)


@pytest.mark.smoke
async def test_recorder_events_and_raced_statuses_have_the_shape(app_client):
    """The recorder's own events: a send whose status webhook beat the record of its send (the raced
    status is applied and published), a failure no road could carry, and the orphan sweep."""
    app = app_client.server.app
    db, tenant = app["db"], await create_tenant(app_client)
    recorder = Recorder(db=db, events=None, settings=app["settings"], notify=lambda _t: None)
    now = utcnow()
    async with db.begin() as conn:
        ids = await outbox_db.enqueue_many(
            conn,
            tenant["id"],
            [{"wa_id": WA, "type": "text", "content": {"text": f"m{i}"}} for i in range(3)],
        )
        rows = await outbox_db.claim(
            conn, tenant["id"], "node-a", limit=10, now=now + dt.timedelta(seconds=1)
        )
        early = {"provider": "business_api", "provider_message_id": "wamid.early", "occurred_at": now}
        await status_facts.apply_status_updates(
            conn,
            tenant["id"],
            [{**early, "status": "delivered", "recipient_id": WA, "business_number": "1555"}],
        )
        by_id = {r["message_id"]: r for r in rows}
        recorded = await recorder.record(
            conn,
            tenant["id"],
            [
                outcomes.sent(by_id[ids[0]], "business_api", "wamid.early", "policy business_api_only"),
                outcomes.failed(by_id[ids[1]], None, "no_route", "no road can carry it", "no route"),
            ],
        )
    kinds = [(type_, data["status"], data["message_id"]) for _t, type_, data in recorded]
    assert kinds == [
        ("message.sent", "sent", ids[0]),
        ("message.status", "delivered", ids[0]),
        ("message.status", "failed", ids[1]),
        ("message.failed", "failed", ids[1]),
    ]
    for _t, type_, data in recorded:
        check_event(type_, data)
        assert data["content"]["text"] in ("m0", "m1") and data["to"] == WA and data["origin"] == "api"
    assert recorded[3][2]["provider"] is None and recorded[3][2]["error"]["code"] == "no_route"


@pytest.mark.smoke
def test_builders_make_exactly_the_schema_keys():
    """The builder's keys are the schema's, in every event kind (the change events included)."""
    row = {
        "id": "a" * 32,
        "conversation_id": 7,
        "direction": "outbound",
        "provider": "web",
        "provider_message_id": "true_1@c.us_X",
        "type": "text",
        "content": {"text": "hi"},
        "status": "read",
        "created_at": dt.datetime(2025, 1, 31, 12, 0, 0, 123456),
        "provider_timestamp": dt.datetime(2025, 1, 31, 12, 0, 0, 120000),
        "wa_id": WA,
        "reactions": [{"from": WA, "emoji": "👍", "timestamp": "2025-01-31T12:01:00.000Z"}],
        "edited_at": dt.datetime(2025, 1, 31, 12, 2),
    }
    data = ev.message_data(row, business="15550001111")
    assert list(data) == SCHEMA["required"] == list(SCHEMA["properties"])
    assert data["origin"] == "phone" and data["from"] == "15550001111" and data["to"] == WA
    assert (
        data["created_at"] == "2025-01-31T12:00:00.123456Z"
        and data["timestamp"] == "2025-01-31T12:00:00.120Z"
    )
    at = dt.datetime(2025, 1, 31, 12, 3)
    for type_, change in (
        (ev.MESSAGE_EDITED, ev.edited_change({"text": "hello"}, at)),
        (ev.MESSAGE_DELETED, ev.deleted_change(at, WA)),
        (ev.MESSAGE_REACTION, ev.reaction_change(WA, "", True, at)),
    ):
        check_event(type_, ev.changed_message(row, change))
        with pytest.raises(AssertionError):  # the change is required, and only its own kind fits
            check_event(type_, data)
    assert set(ev.MESSAGE_EVENT_SCHEMAS) == set(MESSAGE_TYPES)
    assert set(SCHEMA["properties"]["status"]["enum"]) == set(MessageStatus)
    with pytest.raises(AssertionError):  # nothing beyond the shape
        check_event(ev.MESSAGE_STATUS, {**data, "extra": 1})


@pytest.mark.smoke
async def test_openapi_publishes_the_message_schema(client):
    doc = await (await client.get("/api/openapi.json")).json()
    components = doc["components"]["schemas"]
    message = components["Message"]
    assert message["required"] == SCHEMA["required"]
    assert message["properties"]["reactions"]["items"] == {
        "$ref": "#/components/schemas/MessageReactionEntry"
    }
    for name in SCHEMA["$defs"]:
        assert name in components, name
    assert set(message["x-event-schemas"]) == set(MESSAGE_TYPES)
    # The message responses refer to it.
    for model in ("MessageOut", "MessageItem"):
        assert components[model]["allOf"] == [{"$ref": "#/components/schemas/Message"}], model
    page = doc["paths"]["/api/conversations/{conversation_id}/messages"]["get"]["responses"]["200"]
    assert page["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MessagePage"}
    one = doc["paths"]["/api/messages/{message_id}"]["get"]["responses"]["200"]
    assert one["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MessageOut"}
    # The published copy validates like the file: an event checked through the document itself.
    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    sample = ev.received_event(
        {
            "id": "b" * 32,
            "conversation_id": 1,
            "direction": "inbound",
            "provider": "business_api",
            "provider_message_id": "wamid.X",
            "type": "text",
            "content": {"text": "hi"},
            "status": "received",
            "created_at": dt.datetime(2025, 1, 31, 12, 0, 0, 1),
            "provider_timestamp": dt.datetime(2025, 1, 31, 12, 0),
            "wa_id": WA,
        },
        "15550783881",
    )
    for name, data, valid in (
        ("MessageReceivedEvent", sample, True),
        ("MessageReceivedEvent", {**sample, "direction": "outbound"}, False),
        ("MessageSentEvent", sample, False),
    ):
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
        )
        assert validator.is_valid(data) is valid, (name, list(validator.iter_errors(data)))
