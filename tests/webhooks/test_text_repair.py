"""A signed delivery whose text is no Unicode (a lone UTF-16 surrogate: ``"\\ud800"`` in JSON, or the
UTF-8 bytes of one) is answered 200: its good messages are stored and published, the bad one is
stored with each lone surrogate replaced by U+FFFD and flagged in ``content.warnings``
(``control_plane/text_repair.py``, docs/EVENTS.md), and a redelivery stores nothing twice. Before,
every (re)delivery of it was a 503, so Meta retried it for days and its good messages never landed."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from control_plane import events as ev
from control_plane.app import create_app
from tests.fakes import graph_api as g

pytestmark = pytest.mark.timeout(60)
USER = "16505551234"
SCHEMA = ev.message_schema()
VALIDATOR = jsonschema.Draft202012Validator(
    {"$ref": f"{SCHEMA['$id']}#/$defs/MessageReceivedEvent"},
    registry=Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA)),
)
WARNING = {
    "code": "invalid_unicode",
    "path": "text.body",
    "message": "not Unicode text: lone surrogate U+D800 replaced by U+FFFD",
}


def _stored(db_rows, tenant_id: str) -> dict[str, dict[str, Any]]:
    rows = db_rows("SELECT provider_message_id, content FROM messages WHERE tenant_id = :t", t=tenant_id)
    return {r["provider_message_id"]: json.loads(r["content"]) for r in rows}


def _delivery(send, tenant, **bad: Any) -> tuple[bytes, str, str]:
    """(the body as JSON text with a lone surrogate escape, the good wamid, the bad wamid)."""
    good = g.text_message(USER, "good \N{GRINNING FACE}")  # an escaped pair: no repair, no flag
    broken = g.text_message(USER, "bad \ud800 x")
    payload = send.inbound_payload(tenant["pnid"], good, broken, **bad)
    body = json.dumps(payload).encode()  # ASCII with \u escapes, as Meta sends it
    assert b"\\ud800" in body and b"\\ud83d\\ude00" in body
    return body, good["id"], broken["id"]


async def _check_stored(db_rows, published, tenant, good: str, bad: str) -> None:
    stored = _stored(db_rows, tenant["id"])
    assert stored == {
        good: {"text": "good \N{GRINNING FACE}"},
        bad: {"text": "bad \ufffd x", "warnings": [WARNING]},
    }
    events = published(tenant["id"], "message.received")
    assert sorted(e["data"]["provider_message_id"] for e in events) == sorted([good, bad])
    for event in events:
        errors = [e.message for e in VALIDATOR.iter_errors(event["data"])]
        assert not errors, errors


@pytest.mark.smoke
async def test_lone_surrogate_is_stored_escaped_and_flagged_once(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    body, good, bad = _delivery(send, tenant)
    for _ in range(3):  # Meta's redeliveries: the same answer, nothing stored twice
        resp = await send.send(body)
        assert resp.status == 200, resp.text
        assert json.loads(resp.text)["messages"] == 2
    await _check_stored(db_rows, published, tenant, good, bad)


async def test_large_delivery_read_in_the_worker_is_repaired_too(
    aiohttp_client, make_settings, fake, empty_db, business_tenant, db_rows, published
):
    """A body over WEBHOOK_INLINE_DECODE_BYTES is prescanned in the worker process, then parsed on
    the loop: both read the repaired text (its routing ids too)."""
    client = await aiohttp_client(
        create_app(make_settings(GRAPH_API_URL=fake.url, WEBHOOK_INLINE_DECODE_BYTES="64"))
    )
    tenant = await business_tenant()
    send = fake.webhooks(str(client.make_url("/api/whatsapp/webhook")), tenant["app_secret"])
    try:
        body, good, bad = _delivery(send, tenant)
        for _ in range(2):
            resp = await send.send(body)
            assert resp.status == 200, resp.text
    finally:
        await send.close()
    assert client.server.app["webhook_decoder"].offloaded == 2
    await _check_stored(db_rows, published, tenant, good, bad)


@pytest.mark.smoke
async def test_every_other_place_a_lone_surrogate_can_hide(business_tenant, sender, db_rows, published):
    """UTF-8 bytes of a surrogate (read with "surrogatepass"), a split pair, a lone low surrogate in a
    contact's name, a status's error text, an object key, and another change's phone_number_id: 200,
    every good part stored, nothing 503."""
    tenant = await business_tenant()
    send = sender(tenant)
    first = g.text_message(USER, "RAWBYTES")
    second = g.text_message(USER, "pair \ud83d\ude00 split", wamid="wamid.split")
    status = g.status("wamid.unknown-yet", "failed", USER, errors=[g.failed_error(131026, "oops \udfff")])
    payload = send.inbound_payload(tenant["pnid"], first, second, contact_name="Zo\udc00e")
    value = payload["entry"][0]["changes"][0]["value"]
    value["statuses"] = [status]
    value["messages"][0]["\ud800odd_key"] = 1
    stray = g.change_value("\ud800123", messages=[g.text_message(USER, "nobody's")])
    payload["entry"][0]["changes"].append(g.change(stray))
    body = json.dumps(payload).encode()
    body = body.replace(b"RAWBYTES", b"raw \xed\xa0\x80 bytes")  # a surrogate's UTF-8 bytes
    body = body.replace(b"\\ud83d\\ude00 split", b"\xed\xa0\xbd\xed\xb8\x80 split")  # CESU-8: a split pair
    resp = await send.send(body)
    assert resp.status == 200, resp.text
    assert json.loads(resp.text)["unknown_phone_number_ids"] == 1
    stored = _stored(db_rows, tenant["id"])
    assert stored[first["id"]]["text"] == "raw \ufffd bytes"
    assert sorted(w["path"] for w in stored[first["id"]]["warnings"]) == ["text.body", "\ufffdodd_key"]
    assert stored["wamid.split"]["text"] == "pair \N{GRINNING FACE} split"
    assert (
        stored["wamid.split"]["warnings"][0]["message"]
        == "not Unicode text: surrogate pair U+D83D, U+DE00 joined"
    )
    (conv,) = db_rows("SELECT contact_name FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv["contact_name"] == "Zo\ufffde"
    (st,) = db_rows("SELECT error_message FROM message_statuses WHERE tenant_id = :t", t=tenant["id"])
    assert st["error_message"] == "oops \ufffd"
    assert len(published(tenant["id"], "message.received")) == 2
