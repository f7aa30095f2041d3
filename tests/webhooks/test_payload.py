"""Parsing Meta deliveries (pure): every entry and change, every reference inbound type normalized."""

from __future__ import annotations

import pytest

from control_plane import errors
from control_plane.webhooks.payload import parse_delivery
from tests.fakes import graph_api as g

pytestmark = pytest.mark.smoke
USER = "16505551234"


def _contents(*messages):
    parsed = parse_delivery(g.messages_payload("1", "2", messages=messages))
    return [(m["type"], m["content"]) for m in parsed.numbers["2"].messages]


def test_every_reference_type_is_kept():
    order = g._message(
        USER,
        "order",
        {"catalog_id": "c1", "product_items": [{"product_retailer_id": "p1"}]},
        wamid=None,
        timestamp=None,
    )
    system = g._message(
        USER, "system", {"body": "changed number", "wa_id": "1650"}, wamid=None, timestamp=None
    )
    future = g._message(USER, "hologram", {"x": 1}, wamid=None, timestamp=None)
    got = dict(
        _contents(
            g.location_message(USER, 38.7, -9.1, name="Lisboa", address="Praça"),
            g.contacts_message(USER),
            g.list_reply_message(USER, "r1", "Row", "desc"),
            g.button_message(USER, "OPT_OUT", "Stop"),
            g.media_message(USER, "audio", mime_type="audio/ogg"),
            g.media_message(USER, "document", mime_type="application/pdf", filename="a.pdf", caption="c"),
            g.media_message(USER, "sticker", mime_type="image/webp"),
            g.media_message(USER, "video", mime_type="video/mp4"),
            g.text_message(USER, "fwd", context={"forwarded": True}),
            order,
            system,
            future,
        )
    )
    assert got["location"] == {"latitude": 38.7, "longitude": -9.1, "name": "Lisboa", "address": "Praça"}
    assert got["contacts"]["contacts"][0]["phones"][0]["wa_id"] == "5511912345678"
    assert got["interactive"] == {
        "reply_type": "list_reply",
        "id": "r1",
        "title": "Row",
        "description": "desc",
        "context": got["interactive"]["context"],
    }
    assert got["button"] == {"payload": "OPT_OUT", "text": "Stop", "context": got["button"]["context"]}
    assert got["audio"]["mime_type"] == "audio/ogg" and got["audio"]["media_id"]
    assert got["document"]["filename"] == "a.pdf" and got["document"]["caption"] == "c"
    assert got["sticker"]["mime_type"] == "image/webp" and got["video"]["mime_type"] == "video/mp4"
    assert got["text"] == {"text": "fwd", "context": {"forwarded": True}}
    assert got["order"]["raw"]["order"]["catalog_id"] == "c1"
    assert got["system"]["raw"]["system"]["body"] == "changed number"
    assert got["hologram"]["raw"] == {"type": "hologram", "hologram": {"x": 1}}


def test_entries_changes_statuses_and_malformed_items():
    payload = g.batch(
        [
            (
                "w1",
                [
                    g.change_value("p1", messages=[g.text_message(USER, "a")]),
                    g.change_value("p2", statuses=[g.status("wamid.x", "read", USER)]),
                ],
            ),
            ("w2", [g.change_value("p1", messages=[g.text_message(USER, "b")])]),
        ]
    )
    payload["entry"][0]["changes"][0]["value"]["messages"].append({"type": "text"})  # no id, no sender
    payload["entry"][1]["changes"].append({"field": "account_update", "value": {"event": "X"}})
    parsed = parse_delivery(payload)
    assert [m["content"]["text"] for m in parsed.numbers["p1"].messages] == ["a", "b"]
    assert parsed.numbers["p2"].statuses[0]["status"] == "read"
    assert parsed.skipped_items == 1 and parsed.ignored_changes == 0
    assert [c["field"] for _, c in parsed.fields] == ["account_update"]  # for webhooks/fields.py


@pytest.mark.parametrize("data", [[], "x", {"entry": {}}, {"object": "page"}])
def test_not_a_delivery_is_400(data):
    with pytest.raises(errors.BadRequest):
        parse_delivery(data)


def test_failed_status_error_fields():
    st = g.status("wamid.f", "failed", USER, errors=[g.failed_error(131026)])
    [item] = parse_delivery(g.messages_payload("1", "2", statuses=[st])).numbers["2"].statuses
    assert item["error_code"] == "131026" and item["error_message"] == "Message undeliverable"
