"""The bridge's events beyond messages and acks, through the real Node bridge on the scripted driver:
groups (author), status posts, polls and votes, reactions, edits, revokes, group joins and leaves,
calls, and @lid senders resolved to their number where WhatsApp Web knows it (sandbox.contact).
Every such event carries exactly the keys its protocol entry lists (FORWARDED_EVENTS), both
sides list the same, and they come out in the order they happened."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from control_plane.bridge import protocol as p
from tests.bridge.conftest import NODE, REPO

GROUP = "120363041234567890@g.us"
ANN = "15557654321@c.us"
BOB = "15553334444@c.us"
LID = "204316987654321@lid"
LID_PHONE = "15559998888"


def spec(name: str) -> tuple[set[str], set[str]]:
    """(required keys, optional keys) of a forwarded event's data."""
    words = p.FORWARDED_EVENTS[name].split()
    return {w for w in words if not w.endswith("?")}, {w[:-1] for w in words if w.endswith("?")}


def assert_shape(name: str, data: dict[str, Any]) -> None:
    required, optional = spec(name)
    assert required <= set(data) <= required | optional, (name, sorted(data))


def test_forwarded_events_are_listed_alike_on_both_sides():
    script = "const p=require('./bridge/src/protocol');console.log(JSON.stringify(p.FORWARDED))"
    out = subprocess.run([NODE, "-e", script], cwd=REPO, capture_output=True, check=True).stdout
    assert json.loads(out) == p.FORWARDED_EVENTS
    assert set(p.FORWARDED_EVENTS) <= p.EVENT_NAMES
    assert {p.EVENT_MESSAGE_REACTION, p.EVENT_MESSAGE_EDIT, p.EVENT_MESSAGE_REVOKE, p.EVENT_CALL} <= set(
        p.FORWARDED_EVENTS
    )


async def test_group_message_names_its_author_and_its_own_id_shape(spawn_bridge):
    b = await spawn_bridge()
    ready = await b.ready()
    r = await b.conn.request(
        p.CMD_SANDBOX_INCOMING,
        {"from": GROUP, "author": "+1 555 765 4321", "text": "hi all", "notify_name": "Ann"},
    )
    assert r["id"].startswith(f"false_{GROUP}_") and r["id"].endswith(f"_{ANN}")
    msg = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == r["id"])
    assert msg.data["chat_id"] == msg.data["from"] == GROUP and msg.data["author"] == ANN
    assert msg.data["to"] == ready.data["wid"] and "lids" not in msg.data
    assert_shape(p.EVENT_MESSAGE, msg.data)
    with pytest.raises(p.BridgeCommandFailed) as err:  # a group message needs its member
        await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": GROUP, "text": "who?"})
    assert err.value.code == p.ERR_BAD_REQUEST and "author" in err.value.message
    # Typed on the phone into the group: our own number is the author.
    own = await b.conn.request(p.CMD_SANDBOX_OUTGOING, {"to": GROUP, "text": "mine"})
    mine = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == own["id"])
    assert (
        mine.data["from_me"] is True and mine.data["to"] == GROUP and mine.data["author"] == ready.data["wid"]
    )


async def test_status_post_and_poll(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    status = await b.conn.request(
        p.CMD_SANDBOX_INCOMING, {"from": "status@broadcast", "author": BOB, "text": "my day"}
    )
    post = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == status["id"])
    assert post.data["chat_id"] == "status@broadcast" and post.data["author"] == BOB
    poll = {"name": "Lunch?", "options": ["pizza", "sushi", "salad"]}
    r = await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": GROUP, "author": ANN, "poll": poll})
    msg = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == r["id"])
    assert msg.data["type"] == "poll_creation" and msg.data["poll"] == poll and msg.data["body"] == "Lunch?"
    await b.conn.request(p.CMD_SANDBOX_VOTE, {"target": r["id"], "from": BOB, "options": ["sushi", "salad"]})
    vote = await b.wait_event(p.EVENT_VOTE_UPDATE)
    assert vote.data["target"] == r["id"] and vote.data["chat_id"] == GROUP and vote.data["actor"] == BOB
    assert vote.data["options"] == [{"name": "sushi", "local_id": 1}, {"name": "salad", "local_id": 2}]
    assert vote.data["id"] is None and vote.data["from_me"] is False
    assert_shape(p.EVENT_VOTE_UPDATE, vote.data)
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SANDBOX_VOTE, {"target": r["id"], "from": BOB, "options": ["soup"]})
    assert err.value.code == p.ERR_BAD_REQUEST


async def test_reaction_edit_revoke_in_order(spawn_bridge):
    b = await spawn_bridge()
    ready = await b.ready()
    r = await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": "15557654321", "text": "first"})
    react = await b.conn.request(p.CMD_SANDBOX_REACTION, {"target": r["id"], "emoji": "👍", "from_me": True})
    unreact = await b.conn.request(p.CMD_SANDBOX_REACTION, {"target": r["id"], "emoji": "", "from_me": True})
    edit = await b.conn.request(p.CMD_SANDBOX_EDIT, {"target": r["id"], "body": "second"})
    revoke = await b.conn.request(p.CMD_SANDBOX_REVOKE, {"target": r["id"]})
    gone = await b.wait_event(p.EVENT_MESSAGE_REVOKE)
    names = [e.name for e in b.events if e.name in p.FORWARDED_EVENTS]
    assert names == [
        p.EVENT_MESSAGE,
        p.EVENT_MESSAGE_REACTION,
        p.EVENT_MESSAGE_REACTION,
        p.EVENT_MESSAGE_EDIT,
        p.EVENT_MESSAGE_REVOKE,
    ]
    liked, unliked = b.named(p.EVENT_MESSAGE_REACTION)
    assert liked.data["id"] == react["id"] and liked.data["id"].startswith(f"true_{ANN}_")
    assert liked.data["target"] == r["id"] and liked.data["chat_id"] == ANN
    assert liked.data["actor"] == ready.data["wid"] and liked.data["from_me"] is True
    assert (liked.data["emoji"], unliked.data["emoji"], unliked.data["id"]) == ("👍", "", unreact["id"])
    (edited,) = b.named(p.EVENT_MESSAGE_EDIT)
    assert edited.data["id"] == edit["id"] and edited.data["actor"] == ANN and edited.data["from_me"] is False
    assert (edited.data["body"], edited.data["prev_body"]) == ("second", "first")
    assert (
        gone.data["id"] == revoke["id"]
        and gone.data["target"] == r["id"]
        and gone.data["prev_body"] == "second"
    )
    for event in (liked, unliked, edited, gone):
        assert_shape(event.name, event.data)
        assert abs(event.data["timestamp_ms"] - event.ts) < 1000
    # A message the session never saw: accepted (WhatsApp reports such changes too), no previous body.
    await b.conn.request(p.CMD_SANDBOX_EDIT, {"target": f"false_{ANN}_UNKNOWN1", "body": "x"})
    late = await b.wait_event(p.EVENT_MESSAGE_EDIT, lambda d: d["target"].endswith("UNKNOWN1"))
    assert late.data["prev_body"] is None
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SANDBOX_REACTION, {"target": f"false_{GROUP}_X", "emoji": "😀"})
    assert err.value.code == p.ERR_BAD_REQUEST and "from" in err.value.message


async def test_group_join_leave_and_call(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    await b.conn.request(
        p.CMD_SANDBOX_GROUP_JOIN, {"group": GROUP, "members": [ANN, "15553334444"], "by": "15550001111"}
    )
    await b.conn.request(p.CMD_SANDBOX_GROUP_LEAVE, {"group": GROUP, "members": [BOB], "type": "leave"})
    call = await b.conn.request(p.CMD_SANDBOX_CALL, {"from": "15557654321", "video": True})
    got = await b.wait_event(p.EVENT_CALL)
    (join,) = b.named(p.EVENT_GROUP_JOIN)
    (leave,) = b.named(p.EVENT_GROUP_LEAVE)
    assert join.data["chat_id"] == GROUP and join.data["type"] == "add"
    assert join.data["members"] == [ANN, BOB] and join.data["by"] == "15550001111@c.us"
    assert leave.data["type"] == "leave" and leave.data["members"] == [BOB] and leave.data["by"] is None
    assert got.data == {
        "id": call["id"],
        "from": ANN,
        "from_me": False,
        "video": True,
        "group": False,
        "timestamp_ms": got.data["timestamp_ms"],
    }
    for event in (join, leave, got):
        assert_shape(event.name, event.data)
    for bad in (
        {"group": ANN, "members": [BOB]},
        {"group": GROUP, "members": []},
        {"group": GROUP, "members": [BOB], "type": "leave"},
    ):
        with pytest.raises(p.BridgeCommandFailed) as err:
            await b.conn.request(p.CMD_SANDBOX_GROUP_JOIN, bad)
        assert err.value.code == p.ERR_BAD_REQUEST


async def test_lid_senders_resolved_where_known_else_kept(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    other_lid = "99887766554433@lid"
    first = await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": LID, "text": "before"})
    await b.conn.request(p.CMD_SANDBOX_CONTACT, {"lid": LID, "phone": f"+{LID_PHONE}"})
    second = await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": LID, "text": "after"})
    in_group = await b.conn.request(p.CMD_SANDBOX_INCOMING, {"from": GROUP, "author": LID, "text": "g"})
    await b.conn.request(p.CMD_SANDBOX_GROUP_JOIN, {"group": GROUP, "members": [LID, other_lid]})
    await b.conn.request(p.CMD_SANDBOX_REACTION, {"target": second["id"], "emoji": "🙏"})
    react = await b.wait_event(p.EVENT_MESSAGE_REACTION)
    by_id = {e.data["id"]: e.data for e in b.named(p.EVENT_MESSAGE)}
    # Unknown at first: kept as its own id, not turned into digits.
    assert (
        by_id[first["id"]]["from"] == by_id[first["id"]]["chat_id"] == LID
        and "lids" not in by_id[first["id"]]
    )
    resolved = f"{LID_PHONE}@c.us"
    assert by_id[second["id"]]["from"] == by_id[second["id"]]["chat_id"] == resolved
    assert by_id[second["id"]]["lids"] == {resolved: LID}
    assert by_id[in_group["id"]]["author"] == resolved and by_id[in_group["id"]]["chat_id"] == GROUP
    join = b.named(p.EVENT_GROUP_JOIN)[0].data
    assert join["members"] == [resolved, other_lid] and join["lids"] == {resolved: LID}
    assert react.data["actor"] == resolved and react.data["chat_id"] == resolved
    for bad in ({"lid": "15551234567@c.us", "phone": "1555"}, {"lid": LID, "phone": "abc"}):
        with pytest.raises(p.BridgeCommandFailed):
            await b.conn.request(p.CMD_SANDBOX_CONTACT, bad)


def test_lid_resolver_asks_once_times_out_and_keeps_unknown_ids():
    """driver_events.LidResolver: a burst asks once; a lookup that fails or hangs leaves the lid as
    it is (the event is not held beyond the timeout); an unknown lid is not asked again until
    forgotten."""
    script = r"""
const { LidResolver } = require('./bridge/src/driver_events');
const asked = [];
const r = new LidResolver(async (lid) => {
    asked.push(lid);
    if (lid === '1@lid') return new Promise((ok) => setTimeout(() => ok('15551230000@s.whatsapp.net'), 50));
    if (lid === '2@lid') throw new Error('page gone');
    if (lid === '3@lid') return new Promise(() => {});  // never answers
    return null;
}, () => {}, { timeoutMs: 100 });
(async () => {
    const burst = await Promise.all([1, 2, 3].map(() => r.resolve({actor: '1@lid'}, ['actor'])));
    const t0 = Date.now();
    const other = await r.resolve({members: ['2@lid', '3@lid', '4@lid', '15550001111@c.us']}, ['members']);
    const waited = Date.now() - t0;
    await r.resolve({by: '4@lid'}, ['by']);
    r.forget('4@lid');
    await r.resolve({by: '4@lid'}, ['by']);
    console.log(JSON.stringify({burst, other, waited, asked}));
})();
"""
    out = subprocess.run([NODE, "-e", script], cwd=REPO, capture_output=True, check=True, timeout=30).stdout
    got = json.loads(out)
    resolved = {"actor": "15551230000@c.us", "lids": {"15551230000@c.us": "1@lid"}}
    assert got["burst"] == [resolved] * 3
    assert got["other"] == {"members": ["2@lid", "3@lid", "4@lid", "15550001111@c.us"]}
    assert got["waited"] < 1000
    assert got["asked"] == ["1@lid", "2@lid", "3@lid", "4@lid", "4@lid"]
