"""The webhook ingester's hand-written JSON equals what the generic encoders write, character for
character (stored event data is never re-encoded: a difference would reach the clients)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from control_plane.db.messages import dump_json, new_message_ids
from control_plane.events import received_event, received_event_json
from control_plane.messaging.received_fast import received
from control_plane.realtime.publisher import encode_data
from control_plane.webhooks.payload import parse_delivery
from tests.fakes import graph_api as g

pytestmark = pytest.mark.smoke
USER = "16505551234"

CONTENTS = [
    {"text": 'Olá \u2028 \x00 "quoted" \\ größer 😀'},
    {"raw": {"a": [1, 2.5, None, True, False, {"b": "c"}], "n": float("nan")}, "context": {"from": "x"}},
    {},
    None,
    "a string",
    [1, "two"],
]


@pytest.mark.parametrize("content", CONTENTS)
def test_dump_json_is_json_dumps(content):
    assert dump_json(content) == json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str)


def _row(content, **extra):
    row = {
        "id": uuid.uuid4().hex,
        "conversation_id": 42,
        "provider": "business_api",
        "wa_id": USER,
        "contact_name": 'Sheena "N" ö 😀',
        "type": "text",
        "_content": content,
        "content": dump_json(content),
        "provider_message_id": "wamid.HBgL==",
        "provider_timestamp": dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        # what a fast-path row (db.inbound._inbound_rows) has besides
        "direction": "inbound",
        "status": "received",
        "created_at": dt.datetime(2024, 1, 2, 3, 4, 6, 123457),
    }
    row.update(extra)
    return row


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("to", ["15550783881", None])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"contact_name": None, "provider_timestamp": None},
        {"conversation_id": True},
        {"type": "ünïcode\n"},
        # columns other features add (the message shape reads them where present)
        {"provider_user_id": "US.13491208655302741918", "author": "15550001111", "origin": "contact"},
        {"edited_at": dt.datetime(2024, 1, 2, 3, 5), "deleted_at": dt.datetime(2024, 1, 2, 3, 6)},
        {"reactions": [{"from": USER, "emoji": "👍", "timestamp": "2024-01-02T03:07:00.000Z"}]},
        {"reactions": '[{"from":"1","emoji":"x","timestamp":null}]'},
    ],
)
def test_received_event_json_is_encode_data(content, to, extra):
    row = _row(content, **extra)
    data = received_event(row, to)
    assert received_event_json(data, row["content"], encode_data) == encode_data(data)


def test_received_event_json_for_every_reference_type():
    parsed = parse_delivery(
        g.messages_payload(
            "1",
            "2",
            messages=[
                g.location_message(USER, 38.7, -9.1, name="Lisboa", address="Praça"),
                g.contacts_message(USER),
                g.list_reply_message(USER, "r1", "Row", "desc"),
                g.button_message(USER, "OPT_OUT", "Stop"),
                g.media_message(USER, "audio", mime_type="audio/ogg"),
            ],
        )
    )
    for item in parsed.numbers["2"].messages:
        row = _row(item["content"], type=item["type"])
        data = received_event(row, item["to"])
        assert received_event_json(data, row["content"], encode_data) == encode_data(data)


def test_message_ids_are_time_ordered_uuids():
    first = new_message_ids(50)
    assert all(len(i) == 32 and uuid.UUID(i).version == 7 for i in first)
    assert len(set(first)) == 50
    later = new_message_ids(1)[0]
    assert later[:12] >= max(first)[:12]  # the millisecond prefix never goes back


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"a":"\xc3\xa9"}',
        b'{"a":"\xed\xa0\x80"}',
        '{"a":1}'.encode("utf-16"),
        '{"a":1}'.encode("utf-16-le"),
        '{"a":1}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"a":1}',
        b'{"a":1} x',
        b"{",
        b'{"a":"\xff"}',
        b"[1]",
        b' {"a":1}',
        b"{\x00",
        b'{"a":1}\n',
        b'{"\\ud800":1}',
    ],
)
def test_parse_json_reads_bodies_like_json_loads(raw):
    from control_plane import errors
    from control_plane.http.parsing import parse_json

    try:
        expected = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        with pytest.raises(errors.BadRequest) as info:
            parse_json(raw)
        assert info.value.message == f"request body is not valid JSON: {exc}"
    else:
        assert parse_json(raw) == expected


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("to", ["15550783881", None, 5])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"contact_name": None, "provider_timestamp": None, "created_at": None},
        {"conversation_id": True},
        {"type": "ünïcode\n", "contact_name": 7},
        {"id": 12},
        {"provider_user_id": "US.13491208655302741918", "author": "15550001111"},
        {"origin": "contact"},
        {"edited_at": dt.datetime(2024, 1, 2, 3, 5), "deleted_at": dt.datetime(2024, 1, 2, 3, 6)},
        {"reactions": [{"from": USER, "emoji": "👍", "timestamp": "2024-01-02T03:07:00.000Z"}]},
        {"direction": "outbound"},
    ],
)
def test_fast_path_received_is_the_generic_event(content, to, extra):
    """The writer's one-go builder (messaging/received_fast.py): the same data and the same text as
    ``received_event`` + the generic encoder, for a fast-path row and for anything else."""
    row = _row(content, **{"author": None, "provider_user_id": None, **extra})
    data, text = received(row, to, encode_data)
    assert data == received_event(row, to)
    assert text == encode_data(received_event(row, to))


def test_fast_path_received_for_inbound_rows():
    """Rows as db.inbound.InboundPlan makes them (the fast path's own), every reference type."""
    from control_plane.db.inbound import InboundPlan

    parsed = parse_delivery(
        g.messages_payload(
            "1",
            "2",
            messages=[
                g.text_message(USER, "hi \u2028 ö"),
                g.location_message(USER, 38.7, -9.1, name="Lisboa", address="Praça"),
                g.contacts_message(USER),
                g.media_message(USER, "audio", mime_type="audio/ogg"),
            ],
        )
    )
    plan = InboundPlan("t1", parsed.numbers["2"].messages, dt.datetime(2026, 12, 6, 7, 0, 0, 1))
    for row in plan.rows:
        row["conversation_id"] = 7
    for row, to in plan.stored():
        data, text = received(row, to, encode_data)
        assert data == received_event(row, to)
        assert text == encode_data(data)
    # the INSERT writes created_at from the digits the row carries: the same text as without them
    from control_plane.db import inbound_sql

    bare = [{k: v for k, v in row.items() if k != "_created_iso"} for row in plan.rows]
    assert inbound_sql.insert_messages_sql(plan.rows) == inbound_sql.insert_messages_sql(bare)
