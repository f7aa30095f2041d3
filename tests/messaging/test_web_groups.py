"""The Web road's groups, @lid senders, status posts and notices, end to end: the sandbox API drives a
real scripted bridge, the supervisor forwards its events, web_ingest stores and publishes them (real
MariaDB, the real event log).

- a group chat is one conversation (``kind: group``, wa_id = the group's id), each message names its
  member in ``messages.author``; nobody becomes a made-up phone number;
- an @lid sender is stored under its number once WhatsApp Web knows it, else under ``<n>@lid``;
- status@broadcast posts are counted and dropped;
- group joins/leaves, calls and poll votes become group.join / group.leave / call.incoming /
  poll.vote, after what the bridge reported before them."""

from __future__ import annotations

from typing import Any

from control_plane.messaging.web_ingest import inbound_item, parse_notice
from tests.messaging.conftest import create_tenant, ready_sandbox
from tests.support import wait_for

GROUP = "120363041234567890@g.us"
OLD_GROUP = "15550001111-1600000000@g.us"
ANN, BOB = "15557654321", "15553334444"
LID = "204316987654321@lid"


async def _post(http, tenant, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post(f"/api/sandbox/{path}", json=body, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _events(http, tenant) -> list[dict[str, Any]]:
    resp = await http.get("/api/events", params={"limit": "1000"}, headers=tenant["headers"])
    return (await resp.json())["events"]


async def _conversations(http, tenant) -> dict[str, dict[str, Any]]:
    resp = await http.get("/api/conversations", headers=tenant["headers"])
    return {c["wa_id"]: c for c in (await resp.json())["items"]}


async def _until_events(http, tenant, type_: str, n: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len([e for e in await _events(http, tenant) if e["type"] == type_]) >= n

    await wait_for(enough, timeout=15, message=f"{n} {type_} events")
    return [e for e in await _events(http, tenant) if e["type"] == type_]


def test_items_and_notices_parse():
    group_msg = {
        "id": f"false_{GROUP}_A_{ANN}@c.us",
        "chat_id": GROUP,
        "from": GROUP,
        "to": "15550009999@c.us",
        "from_me": False,
        "type": "chat",
        "body": "hi",
        "timestamp": 1700000000,
        "author": f"{ANN}@c.us",
        "notify_name": "Ann",
    }
    item = inbound_item(group_msg)
    assert (item["wa_id"], item["author"], item["contact_name"]) == (GROUP, ANN, None)
    lid_msg = {**group_msg, "author": LID}
    assert inbound_item(lid_msg)["author"] == LID  # kept: its digits are no phone number
    assert inbound_item({**group_msg, "author": None})["author"] is None  # never made up
    one = {**group_msg, "chat_id": LID, "from": LID, "author": None}
    assert (inbound_item(one)["wa_id"], inbound_item(one)["contact_name"]) == (LID, "Ann")
    assert inbound_item({**group_msg, "chat_id": OLD_GROUP, "from": OLD_GROUP})["wa_id"] == OLD_GROUP
    poll = inbound_item({**group_msg, "type": "poll_creation", "poll": {"name": "Q", "options": ["a", "b"]}})
    assert (poll["type"], poll["content"]) == ("poll", {"name": "Q", "options": ["a", "b"]})
    assert parse_notice("call", {"id": "C", "from": f"{ANN}@c.us", "from_me": True}) is None  # ours
    assert parse_notice("group_join", {"chat_id": f"{ANN}@c.us", "members": []}) is None  # no group
    vote = parse_notice(
        "vote_update",
        {
            "target": "true_x@g.us_P",
            "actor": LID,
            "chat_id": GROUP,
            "options": [{"name": "a", "local_id": 0}],
            "timestamp_ms": 1700000000123,
        },
    )
    assert vote is not None and vote.target == "true_x@g.us_P" and vote.wa_id == GROUP
    assert vote.build(7, None) == {
        "conversation_id": 7,
        "message_id": None,
        "provider_message_id": "true_x@g.us_P",
        "from": LID,
        "options": [{"name": "a", "index": 0}],
        "provider": "web",
        "timestamp": "2023-11-14T22:13:20.123Z",
    }


async def test_group_messages_are_one_group_conversation_with_authors(app_client, db_rows):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    session = await (await app_client.get("/api/session", headers=tenant["headers"])).json()
    own = session["own_number"]
    first = await _post(
        app_client, tenant, "incoming", {"from": GROUP, "author": ANN, "text": "hi all", "notify_name": "Ann"}
    )
    second = await _post(app_client, tenant, "incoming", {"from": GROUP, "author": BOB, "text": "hello"})
    mine = await _post(app_client, tenant, "outgoing", {"to": GROUP, "text": "from the phone"})
    await _post(app_client, tenant, "incoming", {"from": OLD_GROUP, "author": f"{ANN}@c.us", "text": "old"})
    received = await _until_events(app_client, tenant, "message.received", 3)
    await _until_events(app_client, tenant, "message.sent", 1)
    convs = await _conversations(app_client, tenant)
    assert set(convs) == {GROUP, OLD_GROUP}  # no conversation per member, none under a member's number
    group = convs[GROUP]
    assert group["kind"] == "group" and group["contact_name"] is None and convs[OLD_GROUP]["kind"] == "group"
    rows = db_rows(
        "SELECT provider_message_id, direction, author, conversation_id FROM messages WHERE tenant_id = :t",
        t=tenant["id"],
    )
    by_pmid = {r["provider_message_id"]: r for r in rows}
    assert by_pmid[first["id"]]["author"] == ANN and by_pmid[second["id"]]["author"] == BOB
    assert by_pmid[mine["id"]]["author"] == own and by_pmid[mine["id"]]["direction"] == "outbound"
    assert {by_pmid[i]["conversation_id"] for i in (first["id"], second["id"], mine["id"])} == {group["id"]}
    assert [e["data"]["from"] for e in received[:2]] == [GROUP, GROUP]
    assert all(e["data"]["conversation_id"] == group["id"] for e in received[:2])
    (kinds,) = db_rows(
        "SELECT COUNT(*) AS n FROM conversations WHERE tenant_id = :t AND kind = 'group'", t=tenant["id"]
    )
    assert kinds["n"] == 2


async def test_lid_senders_and_status_posts(app_client):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    await _post(app_client, tenant, "incoming", {"from": LID, "text": "who am I", "notify_name": "Lee"})
    await _post(app_client, tenant, "incoming", {"from": "status@broadcast", "author": BOB, "text": "my day"})
    await _post(app_client, tenant, "contact", {"lid": LID, "phone": "+1 555 999 8888"})
    await _post(app_client, tenant, "incoming", {"from": LID, "text": "now you know"})
    received = await _until_events(app_client, tenant, "message.received", 2)
    convs = await _conversations(app_client, tenant)
    assert set(convs) == {LID, "15559998888"}  # the lid kept whole until its number was known
    assert convs[LID]["kind"] == "individual" and convs[LID]["contact_name"] == "Lee"
    assert [e["data"]["from"] for e in received] == [LID, "15559998888"]
    ingest = app_client.server.app["dispatcher"].web_ingest
    assert ingest.status_posts == 1  # counted, and no conversation, no event


async def test_notices_follow_what_came_before(app_client):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    poll = await _post(
        app_client,
        tenant,
        "incoming",
        {"from": GROUP, "author": ANN, "poll": {"name": "Lunch?", "options": ["pizza", "sushi"]}},
    )
    await _post(app_client, tenant, "vote", {"target": poll["id"], "from": BOB, "options": ["sushi"]})
    await _post(app_client, tenant, "vote", {"target": f"true_{GROUP}_NEVERSEEN", "from": BOB, "options": []})
    await _post(app_client, tenant, "group_join", {"group": GROUP, "members": [LID, BOB], "by": ANN})
    await _post(app_client, tenant, "group_leave", {"group": GROUP, "members": [BOB], "type": "leave"})
    await _post(app_client, tenant, "group_join", {"group": OLD_GROUP, "members": [BOB], "type": "invite"})
    await _post(app_client, tenant, "incoming", {"from": ANN, "text": "call me"})
    call = await _post(app_client, tenant, "call", {"from": ANN, "video": True})
    await _post(app_client, tenant, "call", {"from": BOB})
    await _until_events(app_client, tenant, "call.incoming", 2)
    events = await _events(app_client, tenant)
    types = [e["type"] for e in events if not e["type"].startswith("session.")]
    assert types == [
        "message.received",
        "poll.vote",
        "poll.vote",
        "group.join",
        "group.leave",
        "group.join",
        "message.received",
        "call.incoming",
        "call.incoming",
    ]
    convs = await _conversations(app_client, tenant)
    group_id, ann_id = convs[GROUP]["id"], convs[ANN]["id"]
    stored_poll = next(e["data"] for e in events if e["type"] == "message.received")
    assert stored_poll["type"] == "poll" and stored_poll["content"] == {
        "name": "Lunch?",
        "options": ["pizza", "sushi"],
    }
    votes = [e["data"] for e in events if e["type"] == "poll.vote"]
    assert votes[0]["message_id"] == stored_poll["message_id"] and votes[0]["conversation_id"] == group_id
    assert votes[0]["from"] == BOB and votes[0]["options"] == [{"name": "sushi", "index": 1}]
    assert (
        votes[1]["message_id"] is None
        and votes[1]["conversation_id"] == group_id
        and votes[1]["options"] == []
    )
    joins = [e["data"] for e in events if e["type"] == "group.join"]
    assert joins[0] == {
        **joins[0],
        "conversation_id": group_id,
        "group": GROUP,
        "members": [LID, BOB],
        "by": ANN,
        "reason": "add",
        "provider": "web",
    }
    assert joins[1]["conversation_id"] is None and joins[1]["reason"] == "invite"  # no conversation yet
    (leave,) = [e["data"] for e in events if e["type"] == "group.leave"]
    assert (leave["members"], leave["by"], leave["reason"]) == ([BOB], None, "leave")
    calls = [e["data"] for e in events if e["type"] == "call.incoming"]
    assert calls[0] == {
        **calls[0],
        "conversation_id": ann_id,
        "from": ANN,
        "call_id": call["id"],
        "video": True,
        "group": False,
        "provider": "web",
    }
    assert calls[1]["conversation_id"] is None and calls[1]["from"] == BOB
    assert all(
        e["data"]["timestamp"].endswith("Z") for e in events if e["type"] in ("poll.vote", "call.incoming")
    )
