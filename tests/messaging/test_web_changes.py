"""Edits, revokes and reactions on the Web road: the bridge's ``message_reaction`` / ``message_edit`` /
``message_revoke`` events (fields: ``control_plane/messaging/web_ingest.py``) handed to the real
inbound service (the supervisor's listener, ``WebIngest``) update the message they name, keep the
history, publish ``message.reaction`` / ``message.edited`` / ``message.deleted``, and wait for a
target that is not stored yet. Real app, MariaDB, the scripted bridge for the messages; the change
events are handed over at the listener (the scripted driver emits none of them yet)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.messaging.conftest import create_tenant, ready_sandbox
from tests.support import wait_for

WA = "16505551234"
CHAT = f"{WA}@c.us"
THUMBS, HEART = "\N{THUMBS UP SIGN}", "\N{HEAVY BLACK HEART}"
T0 = 1_739_321_024_000  # ms


def _row(db_rows, tenant_id: str, pmid: str) -> dict[str, Any]:
    (row,) = db_rows(
        "SELECT * FROM messages WHERE tenant_id = :t AND provider_message_id = :p", t=tenant_id, p=pmid
    )
    row["content"] = json.loads(row["content"])
    row["reactions"] = json.loads(row["reactions"]) if row["reactions"] else []
    return row


def _events(db_rows, tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = db_rows("SELECT type, data FROM event_log WHERE tenant_id = :t ORDER BY seq", t=tenant_id)
    return [(r["type"], json.loads(r["data"])) for r in rows]


def _incoming(pmid: str, body: str, *, ts_s: float = T0 / 1000) -> dict[str, Any]:
    """A bridge ``message`` event from the contact (as the scripted driver emits it)."""
    return {"id": pmid, "chat_id": CHAT, "from": CHAT, "to": "15550001111@c.us", "type": "chat", "body": body,
            "timestamp": ts_s, "notify_name": "Ana"}  # fmt: skip


async def test_sandbox_message_reacted_edited_and_revoked(app_client, db_rows):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    resp = await app_client.post(
        "/api/sandbox/incoming", json={"from": WA, "text": "v1"}, headers=tenant["headers"]
    )
    assert resp.status == 200, await resp.text()
    pmid = (await resp.json())["id"]

    async def stored() -> bool:
        return bool(db_rows("SELECT id FROM messages WHERE provider_message_id = :p", p=pmid))

    await wait_for(stored, timeout=10, message="sandbox message stored")
    ingest = app_client.server.app["dispatcher"].web_ingest
    tid = tenant["id"]
    react = {"id": f"false_{CHAT}_R1", "target": pmid, "actor": CHAT, "emoji": THUMBS, "timestamp_ms": T0}
    await ingest(tid, "message_reaction", react)
    await ingest(
        tid, "message_reaction", {**react, "id": f"false_{CHAT}_R2", "emoji": HEART, "timestamp_ms": T0 + 1}
    )
    edit = {
        "id": f"{pmid}_edit_{T0 + 2}",
        "target": pmid,
        "actor": CHAT,
        "body": "v2",
        "timestamp_ms": T0 + 2,
    }
    await ingest(tid, "message_edit", edit)
    await ingest(
        tid, "message_reaction", {**react, "id": f"false_{CHAT}_R3", "emoji": "", "timestamp_ms": T0 + 3}
    )
    await ingest(
        tid,
        "message_revoke",
        {"id": f"{pmid}_revoke", "target": pmid, "actor": CHAT, "timestamp_ms": T0 + 4},
    )
    await ingest(tid, "message_reaction", react)  # a repeated event changes nothing
    assert await ingest.flush()

    row = _row(db_rows, tid, pmid)
    assert row["content"] is None and row["deleted_at"] is not None and row["edited_at"] is not None
    assert row["reactions"] == []
    history = db_rows("SELECT kind, payload FROM message_changes WHERE tenant_id = :t ORDER BY id", t=tid)
    assert [(h["kind"], json.loads(h["payload"])) for h in history] == [
        ("reaction", {"emoji": THUMBS, "previous_emoji": None}),
        ("reaction", {"emoji": HEART, "previous_emoji": THUMBS}),
        ("edit", {"content": {"text": "v2"}, "previous_content": {"text": "v1"}}),
        ("reaction", {"emoji": "", "previous_emoji": HEART}),
        ("revoke", {"previous_content": {"text": "v2"}}),
    ]
    changes = [
        (t, d) for t, d in _events(db_rows, tid) if t.startswith("message.") and t != "message.received"
    ]
    assert [t for t, _ in changes] == ["message.reaction"] * 2 + [
        "message.edited",
        "message.reaction",
        "message.deleted",
    ]
    assert all(
        d["message_id"] == row["id"] and d["provider"] == "web" and d["from"] == WA for _, d in changes
    )
    assert changes[1][1]["change"] == {
        "from": WA,
        "emoji": HEART,
        "removed": False,
        "at": "2025-02-12T00:43:44.001Z",
    }
    assert changes[2][1]["content"] == {"text": "v2"} and changes[2][1]["change"]["previous_content"] == {
        "text": "v1"
    }
    assert changes[3][1]["change"]["removed"] is True and changes[3][1]["reactions"] == []
    assert changes[4][1]["change"] == {"at": "2025-02-12T00:43:44.004Z", "by": WA}


async def test_web_changes_before_their_messages_are_applied_after_them(app_client, db_rows):
    """No bridge needed: the listener stores for any tenant. An inbound message and a message typed on
    the phone, each named by changes that came first."""
    tenant = await create_tenant(app_client)
    tid = tenant["id"]
    ingest = app_client.server.app["dispatcher"].web_ingest
    inbound_id, phone_id = f"false_{CHAT}_{secrets.token_hex(10)}", f"true_{CHAT}_{secrets.token_hex(10)}"
    await ingest(tid, "message_edit", {"id": "e1", "target": inbound_id, "actor": CHAT, "body": "fixed"})
    await ingest(tid, "message_reaction", {"id": "r1", "target": phone_id, "actor": CHAT, "emoji": THUMBS})
    assert await ingest.flush()
    assert db_rows("SELECT id FROM messages WHERE tenant_id = :t", t=tid) == []
    assert [e for e in _events(db_rows, tid)] == []

    await ingest(tid, "message", _incoming(inbound_id, "typo"))
    phone = {"id": phone_id, "chat_id": CHAT, "from": "15550001111@c.us", "to": CHAT, "from_me": True,
             "type": "chat", "body": "from the phone", "timestamp": T0 / 1000}  # fmt: skip
    await ingest(tid, "message", phone)
    assert await ingest.flush()
    assert _row(db_rows, tid, inbound_id)["content"] == {"text": "fixed"}
    assert [r["emoji"] for r in _row(db_rows, tid, phone_id)["reactions"]] == [THUMBS]
    assert [(t, d["provider_message_id"]) for t, d in _events(db_rows, tid)] == [
        ("message.received", inbound_id),
        ("message.edited", inbound_id),
        ("message.sent", phone_id),
        ("message.reaction", phone_id),
    ]


async def test_web_change_never_touches_another_tenant(app_client, db_rows):
    a, b = await create_tenant(app_client), await create_tenant(app_client)
    ingest = app_client.server.app["dispatcher"].web_ingest
    pmid = f"false_{CHAT}_{secrets.token_hex(10)}"
    for tenant in (a, b):
        await ingest(tenant["id"], "message", _incoming(pmid, "same id in both"))
    await ingest(a["id"], "message_revoke", {"id": f"{pmid}_revoke", "target": pmid, "actor": CHAT})
    assert await ingest.flush()
    assert _row(db_rows, a["id"], pmid)["deleted_at"] is not None
    row_b = _row(db_rows, b["id"], pmid)
    assert row_b["deleted_at"] is None and row_b["content"] == {"text": "same id in both"}
    assert [t for t, _ in _events(db_rows, b["id"])] == ["message.received"]


async def test_sandbox_bridge_reaction_edit_revoke_end_to_end(app_client, db_rows):
    """The whole road: the scripted bridge emits the events (``/api/sandbox/reaction|edit|revoke``),
    the supervisor forwards them, the inbound writer applies them to the message."""
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    tid, headers = tenant["id"], tenant["headers"]

    async def sandbox(cmd: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await app_client.post(f"/api/sandbox/{cmd}", json=body, headers=headers)
        assert resp.status == 200, (cmd, await resp.text())
        return await resp.json()

    pmid = (await sandbox("incoming", {"from": WA, "text": "first"}))["id"]
    await sandbox("reaction", {"target": pmid, "emoji": THUMBS})
    await sandbox("edit", {"target": pmid, "body": "second"})
    await sandbox("revoke", {"target": pmid})

    def kinds() -> list[str]:
        return [t for t, _ in _events(db_rows, tid) if t.startswith("message.")]

    async def all_applied() -> bool:
        return kinds()[-3:] == ["message.reaction", "message.edited", "message.deleted"]

    await wait_for(all_applied, timeout=15, message="reaction, edit and revoke published in order")
    assert kinds().count("message.received") == 1  # the changes are no messages of their own
    row = _row(db_rows, tid, pmid)
    assert row["deleted_at"] is not None and row["edited_at"] is not None
    assert [r["emoji"] for r in row["reactions"]] == [THUMBS]
    events = {t: d for t, d in _events(db_rows, tid)}
    assert events["message.edited"]["change"]["previous_content"]["text"] == "first"
    assert events["message.reaction"]["change"]["emoji"] == THUMBS
    history = db_rows("SELECT kind FROM message_changes WHERE tenant_id = :t ORDER BY created_at, id", t=tid)
    assert [h["kind"] for h in history] == ["reaction", "edit", "revoke"]
