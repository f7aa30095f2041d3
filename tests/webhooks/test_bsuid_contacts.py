"""Contacts without a phone number (Meta's username rollout): messages from a user known only by a
business-scoped user id (BSUID) are stored and published; a conversation is keyed by phone, by
BSUID or both, and merges when Meta later tells us both; replies go to the BSUID (Meta's
``recipient``) where the number is unknown.

Field names: Meta's business-scoped user ids page
(https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids/),
whatsapp-api-js's webhook types and v25 fixtures (github.com/Secreto31126/whatsapp-api-js,
src/types.ts and test/payloads/v25/), pywa's system.json (user_changed_user_id).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.db import inbound as inbound_db
from tests.fakes import graph_api as g
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)
PHONE = "16315551181"
BSUID = "US.13491208655302741918"
# A BSUID as long as Meta's format allows: "US." + 128 letters and digits (a String(32) cuts it).
LONG_BSUID = "US." + "A1b2C3d4" * 16


def user(
    name: str = "test user name", username: str | None = "@testusername", *, phone: bool, bsuid: str = BSUID
):
    contact: dict[str, Any] = {"profile": {"name": name}, "user_id": bsuid}
    if username:
        contact["profile"]["username"] = username
    if phone:
        contact["wa_id"] = PHONE
    return [contact]


def from_user(
    body: str, *, phone: bool, bsuid: str = BSUID, timestamp: float | None = None
) -> dict[str, Any]:
    return g.as_user(g.text_message(PHONE, body, timestamp=timestamp), bsuid, phone=phone)


def conversations(db_rows, tenant_id: str) -> list[dict[str, Any]]:
    return db_rows("SELECT * FROM conversations WHERE tenant_id = :t ORDER BY id", t=tenant_id)


def messages(db_rows, tenant_id: str) -> list[dict[str, Any]]:
    return db_rows("SELECT * FROM messages WHERE tenant_id = :t ORDER BY created_at", t=tenant_id)


@pytest.mark.smoke
async def test_a_username_user_without_phone_is_stored_and_published(
    business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    send = sender(tenant)
    message = from_user("hi", phone=False, bsuid=LONG_BSUID)
    assert "from" not in message
    delivery = await send.inbound(tenant["pnid"], message, contacts=user(phone=False, bsuid=LONG_BSUID))
    assert delivery.status == 200 and '"messages": 1' in delivery.text

    [conv] = conversations(db_rows, tenant["id"])
    assert (conv["wa_id"], conv["bsuid"], conv["username"]) == (LONG_BSUID, LONG_BSUID, "@testusername")
    assert conv["contact_name"] == "test user name" and conv["unread_count"] == 1
    [row] = messages(db_rows, tenant["id"])
    assert row["provider_user_id"] == LONG_BSUID and row["raw"] is None  # all of it in columns and content
    [event] = published(tenant["id"], "message.received")
    assert event["data"]["from"] == LONG_BSUID and event["data"]["content"] == {"text": "hi"}
    assert event["data"]["conversation_id"] == conv["id"]


async def test_phone_and_bsuid_conversations_merge_when_meta_tells_both(
    app_client, business_tenant, sender, db_rows, published, monkeypatch
):
    tenant = await business_tenant()
    send = sender(tenant)
    now = int(time.time())
    first = from_user("from my username", phone=False, timestamp=now - 30)
    second = g.text_message(PHONE, "from my number", timestamp=now - 20)  # an older client: no BSUID
    both = from_user("both at once", phone=True, timestamp=now - 10)
    assert (await send.inbound(tenant["pnid"], first, contacts=user(phone=False))).status == 200
    assert (await send.inbound(tenant["pnid"], second, contact_name="test user name")).status == 200
    by_bsuid, by_phone = conversations(db_rows, tenant["id"])
    assert (by_bsuid["wa_id"], by_phone["wa_id"], by_phone["bsuid"]) == (BSUID, PHONE, None)

    assert (await send.inbound(tenant["pnid"], both, contacts=user(phone=True))).status == 200
    [conv] = conversations(db_rows, tenant["id"])
    assert conv["id"] == by_phone["id"]  # the phone number's conversation stays, the other is gone
    assert (conv["wa_id"], conv["bsuid"], conv["username"]) == (PHONE, BSUID, "@testusername")
    assert conv["unread_count"] == 3
    rows = messages(db_rows, tenant["id"])
    assert [r["provider_message_id"] for r in rows] == [first["id"], second["id"], both["id"]]
    assert {r["conversation_id"] for r in rows} == {conv["id"]}
    assert [r["provider_user_id"] for r in rows] == [BSUID, None, BSUID]
    assert conv["last_message_id"] == rows[-1]["id"]

    events = published(tenant["id"])
    merged = [e for e in events if e["type"] == "conversation.merged"]
    assert [e["data"] for e in merged] == [
        {
            "conversation_id": conv["id"],
            "merged_conversation_id": by_bsuid["id"],
            "wa_id": PHONE,
            "bsuid": BSUID,
        }
    ]
    assert events[-2]["type"] == "conversation.merged"  # published before the message that caused it
    assert events[-1]["data"]["provider_message_id"] == both["id"]
    assert events[-1]["data"]["conversation_id"] == conv["id"]

    # A redelivery changes nothing (no second merge); a later message by BSUID only finds the
    # phone number's conversation (MariaDB: on the fast path, the writer knows where it lives).
    before = (conversations(db_rows, tenant["id"]), messages(db_rows, tenant["id"]), published(tenant["id"]))
    assert (await send.inbound(tenant["pnid"], both, contacts=user(phone=True))).status == 200
    assert (
        conversations(db_rows, tenant["id"]),
        messages(db_rows, tenant["id"]),
        published(tenant["id"]),
    ) == before
    fast: list[int] = []
    real = inbound_db.store_fast

    async def counting(*args: Any, **kw: Any) -> list[int]:
        fast.append(1)
        return await real(*args, **kw)

    monkeypatch.setattr(inbound_db, "store_fast", counting)
    later = from_user("still me", phone=False)
    assert (await send.inbound(tenant["pnid"], later, contacts=user(phone=False))).status == 200
    [conv] = conversations(db_rows, tenant["id"])
    assert conv["unread_count"] == 4
    event = published(tenant["id"], "message.received")[-1]["data"]
    assert event["provider_message_id"] == later["id"] and event["conversation_id"] == conv["id"]
    assert event["from"] == PHONE  # the conversation's address: the number Meta told us
    if app_client.server.app["webhook_ingester"]._driver is not None:
        assert fast == [1]


async def test_a_bsuid_conversation_takes_the_phone_number_when_it_is_the_only_one(
    business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    send = sender(tenant)
    assert (
        await send.inbound(tenant["pnid"], from_user("a", phone=False), contacts=user(phone=False))
    ).status == 200
    [before] = conversations(db_rows, tenant["id"])
    assert (
        await send.inbound(tenant["pnid"], from_user("b", phone=True), contacts=user(phone=True))
    ).status == 200
    [after] = conversations(db_rows, tenant["id"])
    assert (after["id"], after["wa_id"], after["bsuid"], after["unread_count"]) == (
        before["id"],
        PHONE,
        BSUID,
        2,
    )
    assert not published(tenant["id"], "conversation.merged")


async def test_a_changed_bsuid_keeps_its_conversation(business_tenant, sender, db_rows, published):
    """pywa's system.json ``user_changed_user_id`` (no from, no contacts): the conversation of the
    previous BSUID takes the new one, and the user's next messages land in it."""
    tenant = await business_tenant()
    send = sender(tenant)
    new = "MX.0987654321"
    assert (
        await send.inbound(tenant["pnid"], from_user("a", phone=False), contacts=user(phone=False))
    ).status == 200
    system = {
        "id": "wamid.user-id-change",
        "timestamp": str(int(time.time())),
        "system": {
            "body": f"User changed from {BSUID} to {new}",
            "user_id": new,
            "previous_user_id": BSUID,
            "type": "user_changed_user_id",
        },
        "type": "system",
    }
    assert (await send.inbound(tenant["pnid"], system, contacts=[])).status == 200
    later = from_user("b", phone=False, bsuid=new)
    assert (await send.inbound(tenant["pnid"], later, contacts=user(phone=False, bsuid=new))).status == 200
    [conv] = conversations(db_rows, tenant["id"])
    assert (conv["wa_id"], conv["bsuid"], conv["unread_count"]) == (new, new, 3)
    rows = messages(db_rows, tenant["id"])
    assert [r["type"] for r in rows] == ["text", "system", "text"]
    assert json.loads(rows[1]["content"])["raw"]["system"]["previous_user_id"] == BSUID


async def _sent(app_client, tenant: dict[str, Any], message_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def check() -> bool:
        resp = await app_client.get(f"/api/messages/{message_id}", headers=tenant["headers"])
        seen["m"] = await resp.json()
        return seen["m"]["status"] in ("sent", "delivered", "failed")

    await wait_for(check, timeout=15, message="the reply was sent")
    return seen["m"]


async def test_replies_go_to_the_bsuid_or_to_the_number_once_known(
    app_client, business_tenant, sender, fake, db_rows
):
    tenant = await business_tenant()
    send = sender(tenant)
    assert (
        await send.inbound(tenant["pnid"], from_user("hi", phone=False), contacts=user(phone=False))
    ).status == 200

    resp = await app_client.post(
        "/api/messages", headers=tenant["headers"], json={"to": BSUID, "text": "hello"}
    )
    assert resp.status == 202, await resp.text()
    reply = await _sent(app_client, tenant, (await resp.json())["id"])
    assert reply["status"] == "sent", reply
    [record] = fake.sent
    assert record["body"]["recipient"] == BSUID and "to" not in record["body"]
    # Its statuses name the BSUID (recipient_user_id, no recipient_id): stored whole.
    assert (await send.statuses(record["wamid"], ("delivered",)))[0].status == 200
    [fact] = db_rows("SELECT * FROM message_statuses WHERE tenant_id = :t", t=tenant["id"])
    assert fact["recipient_id"] == BSUID and json.loads(fact["raw"])["recipient_user_id"] == BSUID
    assert "recipient_id" not in json.loads(fact["raw"])

    # Once Meta told us the number, a reply addressed to the BSUID goes to the number (Meta's advice).
    assert (
        await send.inbound(tenant["pnid"], from_user("me", phone=True), contacts=user(phone=True))
    ).status == 200
    resp = await app_client.post(
        "/api/messages", headers=tenant["headers"], json={"to": BSUID, "text": "again"}
    )
    assert resp.status == 202, await resp.text()
    assert (await _sent(app_client, tenant, (await resp.json())["id"]))["status"] == "sent"
    assert fake.sent[-1]["body"]["to"] == PHONE and "recipient" not in fake.sent[-1]["body"]
    assert len(conversations(db_rows, tenant["id"])) == 1


async def test_an_invalid_recipient_is_refused_clearly(app_client, business_tenant):
    tenant = await business_tenant()
    resp = await app_client.post(
        "/api/messages", headers=tenant["headers"], json={"to": "us.123", "text": "x"}
    )
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["field"] == "to" and "BSUID" in body["error"]["message"]


@pytest.mark.mariadb
async def test_a_conversation_merged_by_another_node_does_not_come_back(
    app_client, business_tenant, sender, db_rows, sync_engine
):
    """This writer knows a BSUID-only conversation (its id, its address); another node merges it
    into the phone number's. The next message by BSUID must not bring it back under its old id: the
    fast path misses it, and the careful way finds where it went."""
    tenant = await business_tenant()
    send = sender(tenant)
    for body in ("one", "two"):  # the second takes the fast path and learns the conversation's id
        message = from_user(body, phone=False)
        assert (await send.inbound(tenant["pnid"], message, contacts=user(phone=False))).status == 200
    assert (await send.inbound(tenant["pnid"], g.text_message(PHONE, "by number"))).status == 200
    by_bsuid, by_phone = conversations(db_rows, tenant["id"])
    assert (
        app_client.server.app["webhook_ingester"]._conversation_ids[(tenant["id"], BSUID)] == by_bsuid["id"]
    )
    with sync_engine.begin() as conn:  # what another node's merge leaves behind
        ids = {"t": tenant["id"], "gone": by_bsuid["id"], "keep": by_phone["id"], "b": BSUID}
        for statement in (
            "UPDATE messages SET conversation_id = :keep WHERE tenant_id = :t AND conversation_id = :gone",
            "DELETE FROM conversations WHERE id = :gone",
            "UPDATE conversations SET bsuid = :b WHERE id = :keep",
        ):
            conn.execute(sa.text(statement), ids)

    later = from_user("three", phone=False)
    assert (await send.inbound(tenant["pnid"], later, contacts=user(phone=False))).status == 200
    [conv] = conversations(db_rows, tenant["id"])
    assert conv["id"] == by_phone["id"] and conv["wa_id"] == PHONE
    assert {r["conversation_id"] for r in messages(db_rows, tenant["id"])} == {conv["id"]}
    assert len(messages(db_rows, tenant["id"])) == 4


async def test_conversations_show_the_bsuid_and_username(app_client, business_tenant, sender):
    tenant = await business_tenant()
    send = sender(tenant)
    assert (
        await send.inbound(tenant["pnid"], from_user("hi", phone=False), contacts=user(phone=False))
    ).status == 200
    resp = await app_client.get("/api/conversations", headers=tenant["headers"])
    [conv] = (await resp.json())["items"]
    assert (conv["wa_id"], conv["bsuid"], conv["username"]) == (BSUID, BSUID, "@testusername")
