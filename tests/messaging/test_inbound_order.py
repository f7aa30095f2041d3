"""Inbound order on the Web road: messages a contact sends one after another (each after the previous
one's 200 on ``POST /api/sandbox/incoming``) are published (event log seqs) and listed (conversation
history) in the order the bridge reported them, with the bridge's millisecond timestamps.

Once, ten such messages came out as ``m1 m2 m3 m9 m10 m8 m7 m6 m5 m4``: a batch's rows were sorted by
their whole-second timestamp, then by the random message id, and shared one ``created_at``.
Real app, real MariaDB, real scripted bridge."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from tests.messaging.conftest import conversation_history, create_tenant, ready_sandbox
from tests.support import wait_for

CONTACT = "16505550{:03d}"


async def _incoming(http, tenant: dict[str, Any], wa_id: str, texts: list[str]) -> None:
    for text in texts:  # one after another: each waits for the previous one's 200
        resp = await http.post(
            "/api/sandbox/incoming", json={"from": wa_id, "text": text}, headers=tenant["headers"]
        )
        assert resp.status == 200, await resp.text()


def _received(db_rows, tenant_id: str) -> list[dict[str, Any]]:
    rows = db_rows(
        "SELECT seq, data FROM event_log WHERE tenant_id = :t AND type = 'message.received' ORDER BY seq",
        t=tenant_id,
    )
    return [{"seq": r["seq"], **json.loads(r["data"])} for r in rows]


def _ms(text: str) -> dt.datetime:
    """An event timestamp: always milliseconds and a Z (``format_ts``)."""
    assert text.endswith("Z") and len(text) == len("2025-01-31T12:00:00.123Z"), text
    return dt.datetime.fromisoformat(text[:-1])


def _api_ts(text: str) -> dt.datetime:
    assert text.endswith("Z"), text
    return dt.datetime.fromisoformat(text[:-1])


async def _check_contact(http, db_rows, tenant, wa_id: str, texts: list[str]) -> None:
    events = [e for e in _received(db_rows, tenant["id"]) if e["from"] == wa_id]
    assert [e["content"]["text"] for e in events] == texts
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    stamps = [_ms(e["timestamp"]) for e in events]  # the bridge's, to the millisecond
    assert stamps == sorted(stamps)
    history = await conversation_history(http, tenant, events[0]["conversation_id"])
    assert [m["content"]["text"] for m in history] == texts
    assert [m["id"] for m in history] == [e["message_id"] for e in events]
    assert [_api_ts(m["provider_timestamp"]) for m in history] == stamps
    created = [m["created_at"] for m in history]
    assert len(set(created)) == len(created)  # a stable order, not a tie broken by ids


async def _all_stored(db_rows, tenant_id: str, n: int) -> None:
    async def done() -> bool:
        return len(_received(db_rows, tenant_id)) >= n

    await wait_for(done, timeout=20, interval=0.05, message=f"{n} messages published")
    assert len(_received(db_rows, tenant_id)) == n


async def test_one_contact_in_sequence_keeps_its_order(app_client, db_rows):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    texts = [f"m{i}" for i in range(1, 201)]
    await _incoming(app_client, tenant, CONTACT.format(1), texts)
    await _all_stored(db_rows, tenant["id"], len(texts))
    await _check_contact(app_client, db_rows, tenant, CONTACT.format(1), texts)
    stamps = [_ms(e["timestamp"]) for e in _received(db_rows, tenant["id"])]
    assert any(s.microsecond for s in stamps)  # milliseconds kept, not whole seconds


async def test_ten_contacts_at_once_each_keep_their_order(app_client, db_rows):
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    contacts = {CONTACT.format(c): [f"c{c}-m{i}" for i in range(1, 51)] for c in range(10)}
    await asyncio.gather(*(_incoming(app_client, tenant, wa, texts) for wa, texts in contacts.items()))
    await _all_stored(db_rows, tenant["id"], 500)
    for wa_id, texts in contacts.items():
        await _check_contact(app_client, db_rows, tenant, wa_id, texts)


async def test_phone_typed_messages_interleave_in_order(app_client, db_rows):
    """The contact writes, the phone answers, the contact writes again, ...: the history is that
    conversation as it happened (incoming and phone-typed messages go through one writer)."""
    tenant = await create_tenant(app_client, sandbox=True)
    await ready_sandbox(app_client, tenant)
    wa_id = CONTACT.format(7)
    texts = []
    for i in range(10):
        await _incoming(app_client, tenant, wa_id, [f"in{i}"])
        resp = await app_client.post(
            "/api/sandbox/outgoing", json={"to": wa_id, "text": f"out{i}"}, headers=tenant["headers"]
        )
        assert resp.status == 200, await resp.text()
        texts += [f"in{i}", f"out{i}"]

    async def all_stored() -> bool:
        rows = db_rows("SELECT COUNT(*) AS n FROM messages WHERE tenant_id = :t", t=tenant["id"])
        return rows[0]["n"] == len(texts)

    await wait_for(all_stored, timeout=20, interval=0.05, message="every message stored")
    [conv] = db_rows("SELECT id FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    history = await conversation_history(app_client, tenant, conv["id"])
    assert [m["content"]["text"] for m in history] == texts
    assert [m["direction"] for m in history] == ["inbound", "outbound"] * 10
