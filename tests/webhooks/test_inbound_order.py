"""Inbound order on the Cloud road: a contact's messages, delivered by signed webhooks one after
another (each after the previous one's 200), are published (event log seqs) and listed (conversation
history) in delivery order; the messages of one delivery in the delivery's order; Meta's (whole
second) timestamps stored as given."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from tests.fakes import graph_api as g
from tests.messaging.conftest import conversation_history

CONTACT = "16505551{:03d}"


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


async def _deliver(send, tenant: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    for message in messages:  # one after another: each waits for the previous one's 200
        assert (await send.inbound(tenant["pnid"], message)).status == 200


async def _check_contact(app_client, published, tenant, wa_id: str, sent: list[dict[str, Any]]) -> None:
    events = [e for e in published(tenant["id"], "message.received") if e["data"]["from"] == wa_id]
    assert [e["data"]["provider_message_id"] for e in events] == [m["id"] for m in sent]
    stamps = [_utc(int(m["timestamp"])) for m in sent]
    assert [e["data"]["timestamp"] for e in events] == [
        s.isoformat(timespec="milliseconds") + "Z" for s in stamps
    ]
    history = await conversation_history(app_client, tenant, events[0]["data"]["conversation_id"])
    assert [m["provider_message_id"] for m in history] == [m["id"] for m in sent]
    assert [m["provider_timestamp"] for m in history] == [s.isoformat() + "Z" for s in stamps]
    created = [m["created_at"] for m in history]
    assert len(set(created)) == len(created)  # a stable order, not a tie broken by ids


async def test_one_contact_in_sequence_keeps_its_order(app_client, business_tenant, sender, published):
    tenant = await business_tenant()
    send = sender(tenant)
    wa_id = CONTACT.format(1)
    sent = [g.text_message(wa_id, f"m{i}") for i in range(1, 201)]
    await _deliver(send, tenant, sent)
    await _check_contact(app_client, published, tenant, wa_id, sent)
    seqs = [e["seq"] for e in published(tenant["id"])]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_ten_contacts_at_once_each_keep_their_order(app_client, business_tenant, sender, published):
    tenant = await business_tenant()
    send = sender(tenant)
    contacts = {
        CONTACT.format(c): [g.text_message(CONTACT.format(c), f"m{i}") for i in range(50)] for c in range(10)
    }
    await asyncio.gather(*(_deliver(send, tenant, sent) for sent in contacts.values()))
    assert len(published(tenant["id"], "message.received")) == 500
    for wa_id, sent in contacts.items():
        await _check_contact(app_client, published, tenant, wa_id, sent)


async def test_one_delivery_keeps_its_order_within_a_second(app_client, business_tenant, sender, published):
    """Several messages of a contact in one delivery, all stamped with the same second: stored and
    published in the delivery's order (not by their random wamids)."""
    tenant = await business_tenant()
    send = sender(tenant)
    wa_id = CONTACT.format(2)
    at = int(time.time())
    sent = [g.text_message(wa_id, f"m{i}", timestamp=at) for i in range(20)]
    assert (await send.inbound(tenant["pnid"], *sent)).status == 200
    await _check_contact(app_client, published, tenant, wa_id, sent)
