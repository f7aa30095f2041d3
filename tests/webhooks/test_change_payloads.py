"""Parsing the messages that change an earlier one (pure): Meta's reaction, edit and revoke samples
(``change_samples``, cited there) become ``changes`` items, never messages; the Web road's bridge
events (``web_ingest.change_item``) become the same items."""

from __future__ import annotations

import datetime as dt

import pytest

from control_plane.messaging.web_ingest import change_item as web_change_item
from control_plane.webhooks.payload import change_item, parse_delivery
from tests.webhooks import change_samples as s

pytestmark = pytest.mark.smoke
AT = dt.datetime(2025, 2, 12, 0, 43, 44)  # 1739321024


def _parsed(*messages):
    batch = parse_delivery(s.envelope(list(messages))).numbers[s.PHONE_NUMBER_ID]
    return batch.messages, batch.changes


def test_reaction_and_its_removal_are_changes():
    target = s.wamid()
    added, removed = s.reaction(target, "\N{GRINNING FACE}"), s.reaction(target, None)
    messages, changes = _parsed(added, removed)
    assert messages == []
    assert changes == [
        {
            "provider": "business_api",
            "provider_message_id": added["id"],
            "target_provider_message_id": target,
            "kind": "reaction",
            "actor": s.USER,
            "occurred_at": AT,
            "emoji": "\N{GRINNING FACE}",
        },
        {
            "provider": "business_api",
            "provider_message_id": removed["id"],
            "target_provider_message_id": target,
            "kind": "reaction",
            "actor": s.USER,
            "occurred_at": AT,
            "emoji": "",  # no emoji field: the user removed their reaction
        },
    ]


def test_edit_carries_the_new_content_normalized():
    target, context = s.wamid(), s.wamid()
    messages, (change,) = _parsed(s.edit_image_caption(target, "new caption", context_id=context))
    assert messages == []
    assert change["kind"] == "edit" and change["target_provider_message_id"] == target
    assert change["content"] == {
        "mime_type": "image/jpeg",
        "sha256": "P2Tt1ax7/JQOhCcFw1S+2Ju8o7MrNH3tbhZXivHaa6E=",
        "caption": "new caption",
        "media_id": "1003383421387256",
        "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1003383421387256",
        "context": {"id": context},
    }
    (_, (text,)) = _parsed(s.edit_text(target, "fixed typo"))
    assert text["content"] == {"text": "fixed typo"} and text["actor"] == s.USER


def test_revoke_names_its_target():
    target = s.wamid()
    msg = s.revoke(target)
    messages, (change,) = _parsed(msg)
    assert messages == []
    assert change == {
        "provider": "business_api",
        "provider_message_id": msg["id"],
        "target_provider_message_id": target,
        "kind": "revoke",
        "actor": s.USER,
        "occurred_at": AT,
    }


def test_message_echo_revoke_and_edit_parse_with_the_business_as_actor():
    target = s.wamid()
    revoke = change_item(s.echo_revoke(target))
    edit = change_item(s.echo_edit(target, "better caption"))
    assert revoke["kind"] == "revoke" and revoke["actor"] == s.DISPLAY_NUMBER
    assert revoke["target_provider_message_id"] == target
    assert edit["kind"] == "edit" and edit["content"] == {"caption": "better caption"}


def test_malformed_changes_are_skipped_and_counted():
    no_target = s.revoke("")
    no_id = {**s.reaction(s.wamid(), "x"), "id": ""}
    no_message = s.edit_text(s.wamid(), "x")
    no_message["edit"].pop("message")
    parsed = parse_delivery(s.envelope([no_target, no_id, no_message, s.reaction(s.wamid(), "y")]))
    assert len(parsed.numbers[s.PHONE_NUMBER_ID].changes) == 1
    assert parsed.skipped_items == 3


def test_web_bridge_change_events():
    reaction = web_change_item(
        "message_reaction",
        {
            "id": "false_16505551234@c.us_REACT1",
            "target": "true_16505551234@c.us_ABC",
            "actor": "16505551234@c.us",
            "emoji": "\N{THUMBS UP SIGN}",
            "timestamp_ms": 1739321024123,
        },
    )
    assert reaction == {
        "provider": "web",
        "provider_message_id": "false_16505551234@c.us_REACT1",
        "target_provider_message_id": "true_16505551234@c.us_ABC",
        "kind": "reaction",
        "actor": "16505551234",
        "occurred_at": AT.replace(microsecond=123000),
        "emoji": "\N{THUMBS UP SIGN}",
    }
    edit = web_change_item("message_edit", {"id": "e1", "target": "m1", "actor": "1555", "body": "new"})
    assert edit["kind"] == "edit" and edit["text"] == "new" and edit["occurred_at"] is None
    revoke = web_change_item("message_revoke", {"id": "m1_revoke", "target": "m1"})
    assert revoke["kind"] == "revoke" and revoke["actor"] is None
    assert web_change_item("message_revoke", {"id": "x"}) is None  # no target
    assert web_change_item("message_edit", {"target": "m1"}) is None  # no id of its own
    assert web_change_item("message", {"id": "x", "target": "y"}) is None
