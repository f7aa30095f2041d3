"""Edits, revokes and reactions on the Cloud road, through signed webhooks into the real app: they
update the ORIGINAL message (never a new row), keep its content history in ``message_changes``,
publish ``message.edited`` / ``message.deleted`` / ``message.reaction``, wait for a target that is
not stored yet, and change nothing when redelivered. Samples: ``change_samples`` (Meta's pages)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from control_plane.db import messages as messages_db
from control_plane.providers.cloud_api import CloudCredentials
from tests.fakes import graph_api as g
from tests.webhooks import change_samples as s

pytestmark = pytest.mark.timeout(60)
USER = s.USER
OTHER = "16505559876"
# The one message shape (every message.* event) plus the change events' one extra key.
SHAPE = {
    "message_id", "conversation_id", "direction", "origin", "from", "to", "author", "contact_name",
    "type", "content", "provider", "provider_message_id", "provider_user_id", "status", "timestamp",
    "created_at", "edited_at", "deleted_at", "error", "route_reason", "reactions",
}  # fmt: skip
THUMBS, HEART = "\N{THUMBS UP SIGN}", "\N{HEAVY BLACK HEART}"


BASE = int(time.time()) - 100  # provider times: recent (a reaction counts within 30 days), fixed


def _ts(offset: int) -> str:
    return str(BASE + offset)


def _iso(ts: str) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(int(ts)))


async def _deliver(send, tenant, *messages: dict[str, Any], copies: int = 1) -> None:
    delivery = await send.inbound(tenant["pnid"], *messages, copies=copies)
    assert delivery.status == 200, delivery.text


def _row(db_rows, tenant_id: str, wamid: str) -> dict[str, Any]:
    (row,) = db_rows(
        "SELECT * FROM messages WHERE tenant_id = :t AND provider_message_id = :w", t=tenant_id, w=wamid
    )
    row["content"] = json.loads(row["content"])
    row["reactions"] = json.loads(row["reactions"]) if row["reactions"] else []
    return row


def _history(db_rows, tenant_id: str, message_id: str | None = None) -> list[dict[str, Any]]:
    rows = db_rows("SELECT * FROM message_changes WHERE tenant_id = :t ORDER BY id", t=tenant_id)
    for r in rows:
        r["payload"] = json.loads(r["payload"])
    return [r for r in rows if message_id is None or r["message_id"] == message_id]


def _changes(published, tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for e in published(tenant_id):
        if e["type"] in ("message.edited", "message.deleted", "message.reaction"):
            assert set(e["data"]) == SHAPE | {"change"}, set(e["data"]) ^ (SHAPE | {"change"})
            out.append((e["type"], e["data"]))
    return out


async def test_reactions_update_their_message_one_per_reactor(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    target = g.text_message(USER, "Does it come in another color?", timestamp=_ts(0))
    await _deliver(send, tenant, target)
    await _deliver(send, tenant, s.reaction(target["id"], THUMBS, ts=_ts(1)))
    await _deliver(send, tenant, s.reaction(target["id"], HEART, ts=_ts(2)))  # replaces USER's
    await _deliver(send, tenant, s.reaction(target["id"], THUMBS, sender=OTHER, ts=_ts(3)))
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["reactions"] == [
        {"from": USER, "emoji": HEART, "timestamp": _iso(_ts(2))},
        {"from": OTHER, "emoji": THUMBS, "timestamp": _iso(_ts(3))},
    ]
    await _deliver(send, tenant, s.reaction(target["id"], None, ts=_ts(4)))  # USER removes theirs
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["reactions"] == [{"from": OTHER, "emoji": THUMBS, "timestamp": _iso(_ts(3))}]
    assert row["content"] == {"text": "Does it come in another color?"} and row["edited_at"] is None

    # Never a row of their own; each a change of the message, published with the message's shape.
    assert len(db_rows("SELECT id FROM messages WHERE tenant_id = :t", t=tenant["id"])) == 1
    assert [h["kind"] for h in _history(db_rows, tenant["id"], row["id"])] == ["reaction"] * 4
    assert [e["data"]["provider_message_id"] for e in published(tenant["id"], "message.received")] == [
        target["id"]
    ]
    events = _changes(published, tenant["id"])
    assert [(t, d["change"]["from"], d["change"]["emoji"], d["change"]["removed"]) for t, d in events] == [
        ("message.reaction", USER, THUMBS, False),
        ("message.reaction", USER, HEART, False),
        ("message.reaction", OTHER, THUMBS, False),
        ("message.reaction", USER, HEART, True),  # a removal names what it removed
    ]
    last = events[-1][1]
    assert last["message_id"] == row["id"] and last["provider_message_id"] == target["id"]
    assert last["direction"] == "inbound" and last["from"] == USER and last["type"] == "text"
    assert last["reactions"] == [{"from": OTHER, "emoji": THUMBS, "timestamp": _iso(_ts(3))}]
    assert last["change"]["at"] == _iso(_ts(4)) and last["content"] == row["content"]
    assert events[0][1]["reactions"] == [{"from": USER, "emoji": THUMBS, "timestamp": _iso(_ts(1))}]

    # An older reaction arriving late does not undo a newer one: recorded, not applied.
    await _deliver(send, tenant, s.reaction(target["id"], "\N{FIRE}", sender=OTHER, ts=_ts(2)))
    assert _row(db_rows, tenant["id"], target["id"])["reactions"] == row["reactions"]
    assert len(_changes(published, tenant["id"])) == 4
    assert _history(db_rows, tenant["id"])[-1]["payload"]["skipped"] == "stale"


async def test_edits_and_a_revoke_keep_every_previous_content(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    target = g.text_message(USER, "v1", timestamp=_ts(0))
    await _deliver(send, tenant, target)
    await _deliver(send, tenant, s.edit_text(target["id"], "v2", ts=_ts(1)))
    await _deliver(send, tenant, s.edit_text(target["id"], "v3", ts=_ts(2)))
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["content"] == {"text": "v3"} and row["deleted_at"] is None
    assert row["edited_at"] is not None and row["type"] == "text"

    await _deliver(send, tenant, s.revoke(target["id"], ts=_ts(3)))
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["content"] is None and row["deleted_at"] is not None  # what everyone sees now
    history = _history(db_rows, tenant["id"], row["id"])
    assert [(h["kind"], h["payload"]) for h in history] == [
        ("edit", {"content": {"text": "v2"}, "previous_content": {"text": "v1"}}),
        ("edit", {"content": {"text": "v3"}, "previous_content": {"text": "v2"}}),
        ("revoke", {"previous_content": {"text": "v3"}}),
    ]
    assert all(h["actor"] == USER and h["applied_at"] is not None for h in history)

    events = _changes(published, tenant["id"])
    assert [t for t, _ in events] == ["message.edited", "message.edited", "message.deleted"]
    (_, e1), (_, e2), (_, deleted) = events
    assert e1["content"] == {"text": "v2"} and e1["change"] == {
        "previous_content": {"text": "v1"},
        "at": _iso(_ts(1)),
    }
    assert e2["content"] == {"text": "v3"} and e2["change"]["previous_content"] == {"text": "v2"}
    assert e2["edited_at"] == _iso(_ts(2)) and e2["deleted_at"] is None
    assert deleted["content"] is None and deleted["deleted_at"] == _iso(_ts(3))
    assert deleted["change"] == {"at": _iso(_ts(3)), "by": USER}

    # After the revoke an edit (or a second revoke) is recorded, not applied or published.
    await _deliver(
        send, tenant, s.edit_text(target["id"], "v4", ts=_ts(4)), s.revoke(target["id"], ts=_ts(5))
    )
    assert _row(db_rows, tenant["id"], target["id"])["content"] is None
    assert [h["payload"].get("skipped") for h in _history(db_rows, tenant["id"])[-2:]] == [
        "deleted",
        "deleted",
    ]
    assert len(_changes(published, tenant["id"])) == 3


async def test_a_caption_edit_takes_meta_s_edited_message(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    target = g.image_message(USER, caption="old caption", timestamp=_ts(0))
    await _deliver(send, tenant, target)
    context = s.wamid()
    await _deliver(
        send, tenant, s.edit_image_caption(target["id"], "new caption", context_id=context, ts=_ts(1))
    )
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["type"] == "image" and row["content"]["caption"] == "new caption"
    assert row["content"]["context"] == {"id": context}
    ((kind, data),) = _changes(published, tenant["id"])
    assert kind == "message.edited" and data["change"]["previous_content"]["caption"] == "old caption"


@pytest.mark.smoke
async def test_changes_before_their_target_wait_and_follow_it_in_order(
    business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    send = sender(tenant)
    await _deliver(send, tenant, g.text_message(USER, "hello", timestamp=_ts(0)))  # a known contact
    target = g.text_message(USER, "v1", timestamp=_ts(1))
    edit, react = s.edit_text(target["id"], "v2", ts=_ts(2)), s.reaction(target["id"], THUMBS, ts=_ts(3))
    await _deliver(send, tenant, edit)
    await _deliver(send, tenant, react, copies=2)  # a redelivery of a pending change: still one
    pending = _history(db_rows, tenant["id"])
    assert [(p["kind"], p["message_id"], p["applied_at"]) for p in pending] == [
        ("edit", None, None),
        ("reaction", None, None),
    ]
    assert _changes(published, tenant["id"]) == []

    await _deliver(send, tenant, target)  # messages only: the fast path on MariaDB must see them
    row = _row(db_rows, tenant["id"], target["id"])
    assert row["content"] == {"text": "v2"}
    assert row["reactions"] == [{"from": USER, "emoji": THUMBS, "timestamp": _iso(_ts(3))}]
    applied = _history(db_rows, tenant["id"])
    assert all(a["message_id"] == row["id"] and a["applied_at"] is not None for a in applied)
    assert applied[0]["payload"] == {"content": {"text": "v2"}, "previous_content": {"text": "v1"}}
    tail = [(e["type"], e["data"]["message_id"]) for e in published(tenant["id"])][-3:]
    assert tail == [
        ("message.received", row["id"]),
        ("message.edited", row["id"]),
        ("message.reaction", row["id"]),
    ]
    received = published(tenant["id"], "message.received")[-1]["data"]
    assert received["content"] == {"text": "v1"}  # as it arrived; the edit follows
    assert len(db_rows("SELECT id FROM messages WHERE tenant_id = :t", t=tenant["id"])) == 2


async def test_target_and_change_in_one_delivery(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    target = g.text_message(USER, "v1", timestamp=_ts(0))
    await _deliver(send, tenant, target, s.reaction(target["id"], THUMBS, ts=_ts(1)))
    row = _row(db_rows, tenant["id"], target["id"])
    assert [r["emoji"] for r in row["reactions"]] == [THUMBS]
    assert [e["type"] for e in published(tenant["id"])] == ["message.received", "message.reaction"]


async def test_redelivered_changes_change_nothing(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    target = g.text_message(USER, "v1", timestamp=_ts(0))
    await _deliver(send, tenant, target)
    edit, react, revoke = (
        s.edit_text(target["id"], "v2", ts=_ts(1)),
        s.reaction(target["id"], THUMBS, ts=_ts(2)),
        s.revoke(target["id"], ts=_ts(3)),
    )
    await _deliver(send, tenant, edit, react, copies=2)
    before = _row(db_rows, tenant["id"], target["id"])
    await _deliver(send, tenant, edit)
    await _deliver(send, tenant, react)
    after = _row(db_rows, tenant["id"], target["id"])
    assert after == before and after["content"] == {"text": "v2"}
    assert [h["kind"] for h in _history(db_rows, tenant["id"])] == ["edit", "reaction"]
    assert [t for t, _ in _changes(published, tenant["id"])] == ["message.edited", "message.reaction"]
    await _deliver(send, tenant, revoke, copies=3)
    assert [t for t, _ in _changes(published, tenant["id"])][-1:] == ["message.deleted"]
    assert len(_history(db_rows, tenant["id"])) == 3


async def test_a_change_never_touches_another_tenant(business_tenant, sender, db_rows, published):
    a, b = await business_tenant(), await business_tenant()
    send_a, send_b = sender(a), sender(b)
    shared = g.text_message(USER, "same wamid in both tenants", timestamp=_ts(0))
    await _deliver(send_a, a, shared)
    await _deliver(send_b, b, shared)
    await _deliver(send_a, a, s.edit_text(shared["id"], "edited in A", ts=_ts(1)))
    await _deliver(send_a, a, s.reaction(shared["id"], THUMBS, ts=_ts(2)))
    assert _row(db_rows, a["id"], shared["id"])["content"] == {"text": "edited in A"}
    row_b = _row(db_rows, b["id"], shared["id"])
    assert row_b["content"] == {"text": "same wamid in both tenants"}
    assert row_b["reactions"] == [] and row_b["edited_at"] is None
    assert _changes(published, b["id"]) == [] and _history(db_rows, b["id"]) == []

    # A change B keeps pending is not applied when A stores a message with that wamid.
    later = g.text_message(USER, "later", timestamp=_ts(3))
    await _deliver(send_b, b, s.revoke(later["id"], ts=_ts(4)))
    await _deliver(send_a, a, later)
    assert _row(db_rows, a["id"], later["id"])["deleted_at"] is None
    (pending,) = [h for h in _history(db_rows, b["id"]) if h["kind"] == "revoke"]
    assert pending["message_id"] is None and pending["applied_at"] is None
    assert [t for t, _ in _changes(published, a["id"])] == ["message.edited", "message.reaction"]


async def test_a_reaction_to_a_message_the_business_sent(
    app_client, business_tenant, sender, db_rows, published
):
    """The common case: the contact reacts to one of ours (an outbound row that knows its wamid)."""
    tenant = await business_tenant()
    send = sender(tenant)
    await _deliver(send, tenant, g.text_message(USER, "hi", timestamp=_ts(0)))  # opens the window
    app = app_client.server.app
    creds = CloudCredentials(tenant["pnid"], tenant["waba"], tenant["token"])
    wamid = (await app["cloud_api"].send_text(creds, USER, "Our reply")).wamid
    async with app["db"].begin() as conn:
        conv = await messages_db.get_or_create_conversation(conn, tenant["id"], USER)
        row = await messages_db.create_outbound_message(
            conn, tenant["id"], conv["id"], type="text", content={"text": "Our reply"}
        )
        await messages_db.advance_message_status(
            conn, tenant["id"], row["id"], "sent", provider="business_api", provider_message_id=wamid
        )
    await _deliver(send, tenant, s.reaction(wamid, THUMBS, ts=_ts(1)))
    stored = _row(db_rows, tenant["id"], wamid)
    assert stored["id"] == row["id"] and stored["status"] == "sent"
    assert stored["reactions"] == [{"from": USER, "emoji": THUMBS, "timestamp": _iso(_ts(1))}]
    ((kind, data),) = _changes(published, tenant["id"])
    assert kind == "message.reaction" and data["direction"] == "outbound" and data["to"] == USER
    assert data["message_id"] == row["id"] and data["content"] == {"text": "Our reply"}
