"""Crash recovery in the running app (messaging/recovery.py): the claims of a process that died on this
node are settled from its send journal at once (the lease, 60 s, never comes into it), and a send
whose answer was lost is confirmed by its status webhook or sent again after the reconcile delay
measured from the tenant's own status webhooks, not after the longest wait.

A dead process is made as it would leave things: its rows claimed in the database under its node id
(``outbox_db.claim``) and its journal written through ``SendJournal``, then closed (its lock free)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from control_plane.app import create_app
from control_plane.db import Database
from control_plane.db import outbox as outbox_db
from control_plane.messaging.send_journal import SendJournal
from control_plane.providers.base import Sent
from tests.fakes import graph_api as g
from tests.messaging.conftest import create_tenant
from tests.support import wait_for

pytestmark = [pytest.mark.smoke, pytest.mark.timeout(90)]

CLOUD = "business_api"
DEAD = "node-deadbeef0001"
TEMPLATE = {"name": "order_update", "language": "en_US"}


async def business_tenant(http, fake: g.FakeGraphAPI) -> dict[str, Any]:
    tenant = await create_tenant(http)
    pnid, waba = str(10**14 + secrets.randbelow(10**14)), str(10**14 + secrets.randbelow(10**14))
    token, app_secret = "EAAG-" + secrets.token_hex(12), "secret-" + secrets.token_hex(8)
    fake.add_number(pnid, waba, token)
    fake.add_template(waba, TEMPLATE["name"], TEMPLATE["language"])
    resp = await http.post(
        "/api/whatsapp/config",
        headers=tenant["headers"],
        json={
            "api_type": "business_api",
            "fallback_policy": "business_api_only",
            "phone_number_id": pnid,
            "waba_id": waba,
            "access_token": token,
            "app_secret": app_secret,
            "verify_token": "verify-" + secrets.token_hex(8),
        },
    )
    assert resp.status == 201, await resp.text()
    tenant.update(pnid=pnid, waba=waba, app_secret=app_secret)
    tenant["meta"] = fake.webhooks(str(http.make_url("/api/whatsapp/webhook")), app_secret)
    return tenant


async def claimed_by_the_dead(database_url: str, tenant_id: str, recipients: list[str]) -> list[dict]:
    """Template messages queued and claimed by DEAD in one transaction (no live node sees them queued)."""
    db = Database(database_url)
    try:
        async with db.begin() as conn:
            await outbox_db.enqueue_many(
                conn, tenant_id, [{"wa_id": r, "type": "template", "content": TEMPLATE} for r in recipients]
            )
            rows = await outbox_db.claim(conn, tenant_id, DEAD, limit=len(recipients))
    finally:
        await db.close()
    return sorted(rows, key=lambda r: r["wa_id"])


async def message(http, tenant, message_id: str) -> dict[str, Any]:
    resp = await http.get(f"/api/messages/{message_id}", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def is_sent(http, tenant, message_id: str) -> bool:
    return (await message(http, tenant, message_id))["status"] == "sent"


def reasons(msg: dict[str, Any]) -> str:
    return " | ".join(str(t.get("reason")) for t in msg["transitions"])


async def test_claims_of_a_dead_process_here_are_settled_from_its_journal_at_once(
    msg_settings, database_url, empty_db, aiohttp_client, fake
):
    settings = msg_settings(MESSAGING_LEASE_S="60", MESSAGING_RECONCILE_S="60")
    http = await aiohttp_client(create_app(settings))
    tenant = await business_tenant(http, fake)
    accepted, unsent, open_ = await claimed_by_the_dead(
        database_url, tenant["id"], ["16505550001", "16505550002", "16505550003"]
    )
    journal = SendJournal.open(settings.data_dir, DEAD)
    assert journal is not None
    journal.sending(accepted["message_id"], accepted["attempts"], CLOUD)
    journal.answered(accepted["message_id"], accepted["attempts"], CLOUD, Sent("wamid.FROM-THE-JOURNAL"))
    journal.sending(open_["message_id"], open_["attempts"], CLOUD)  # the kill came mid-request
    journal.close()  # the process is gone

    # Meta accepted the open request: its status webhook names our id (biz_opaque_callback_data).
    item = g.status(
        "wamid.OPEN-AT-THE-KILL", "sent", open_["wa_id"], biz_opaque_callback_data=open_["message_id"]
    )
    delivery = await tenant["meta"].send(g.messages_payload(tenant["waba"], tenant["pnid"], statuses=[item]))
    assert delivery.status == 200, delivery.text

    for m in (accepted, unsent, open_):
        await wait_for(lambda m=m: is_sent(http, tenant, m["message_id"]), timeout=15, message="settled")
    got = await message(http, tenant, accepted["message_id"])
    assert got["provider_message_id"] == "wamid.FROM-THE-JOURNAL" and "send journal" in reasons(got)
    got = await message(http, tenant, open_["message_id"])
    assert got["provider_message_id"] == "wamid.OPEN-AT-THE-KILL"
    assert "recovered after an unknown outcome" in reasons(got)
    assert "died before sending it" in reasons(await message(http, tenant, unsent["message_id"]))
    # only the claim that never left was sent (once); the others were not sent again
    assert [r["biz_opaque_callback_data"] for r in fake.sent] == [unsent["message_id"]]
    assert not list((settings.data_dir / "send-journal").glob(f"{DEAD}.*"))  # settled: its files are gone


async def test_unconfirmed_send_goes_again_after_the_measured_delay_not_the_longest_wait(
    msg_settings, database_url, empty_db, aiohttp_client, fake
):
    settings = msg_settings(
        MESSAGING_RECONCILE_S="300", MESSAGING_RECONCILE_MIN_S="1", MESSAGING_RECONCILE_FACTOR="4"
    )
    http = await aiohttp_client(create_app(settings))
    tenant = await business_tenant(http, fake)

    async def send_and_confirm(to: str) -> str:
        resp = await http.post(
            "/api/messages",
            headers=tenant["headers"],
            json={"to": to, "type": "template", "template": TEMPLATE},
        )
        assert resp.status == 202, await resp.text()
        mid = (await resp.json())["id"]
        await wait_for(lambda: is_sent(http, tenant, mid), timeout=10, message="sent")
        wamid = (await message(http, tenant, mid))["provider_message_id"]
        await tenant["meta"].statuses(wamid, ("sent",))  # Meta's status, at once
        return mid

    # The tenant's statuses come within a fraction of a second: the measured delay is the 1 s floor.
    for i in range(25):
        await send_and_confirm(f"1650555{i:04d}")
    (lost,) = await claimed_by_the_dead(database_url, tenant["id"], ["16505559999"])
    journal = SendJournal.open(settings.data_dir, DEAD)
    assert journal is not None
    journal.sending(lost["message_id"], lost["attempts"], CLOUD)  # the request never reached Meta
    journal.close()
    await wait_for(
        lambda: _unknown(database_url, tenant["id"], lost["message_id"]), timeout=10, message="taken over"
    )
    await send_and_confirm("16505558888")  # statuses keep coming after it became unknown

    await wait_for(lambda: is_sent(http, tenant, lost["message_id"]), timeout=15, message="sent again")
    got = await message(http, tenant, lost["message_id"])
    assert "p99 status delay" in reasons(got), reasons(got)
    assert [r["biz_opaque_callback_data"] for r in fake.sent].count(lost["message_id"]) == 1


async def _unknown(database_url: str, tenant_id: str, message_id: str) -> bool:
    db = Database(database_url)
    try:
        async with db.connect() as conn:
            row = await outbox_db.get_outbox(conn, tenant_id, message_id)
    finally:
        await db.close()
    return row is not None and row["state"] == "unknown"


async def test_a_claim_whose_lease_expired_is_still_settled_by_its_journal(
    msg_settings, database_url, empty_db, aiohttp_client, fake
):
    """The process hung past its lease, then died: its answered send is still recorded from the
    journal, not sent again (nor left waiting for a confirmation)."""
    settings = msg_settings(MESSAGING_LEASE_S="1", MESSAGING_RECONCILE_S="60")
    http = await aiohttp_client(create_app(settings))
    tenant = await business_tenant(http, fake)
    (row,) = await claimed_by_the_dead(database_url, tenant["id"], ["16505550007"])
    journal = SendJournal.open(settings.data_dir, DEAD)  # held: the process is alive, but silent
    assert journal is not None
    journal.sending(row["message_id"], row["attempts"], CLOUD)
    journal.answered(row["message_id"], row["attempts"], CLOUD, Sent("wamid.BEFORE-THE-HANG"))
    await wait_for(
        lambda: _unknown(database_url, tenant["id"], row["message_id"]), timeout=10, message="lease expired"
    )
    journal.close()  # now it is gone
    await wait_for(lambda: is_sent(http, tenant, row["message_id"]), timeout=10, message="settled")
    got = await message(http, tenant, row["message_id"])
    assert got["provider_message_id"] == "wamid.BEFORE-THE-HANG" and "send journal" in reasons(got)
    assert fake.sent == []
