"""The Meta webhook router against the real app, fed by the fake Graph API's signed webhook sender."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from control_plane.db import messages as messages_db
from control_plane.db import status_facts
from control_plane.providers.cloud_api import CloudCredentials
from tests.fakes import graph_api as g

pytestmark = pytest.mark.timeout(60)
USER = "16505551234"


def _as_dt(value):
    """Raw SQL gives datetimes on MariaDB, ISO strings on SQLite."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _messages(db_rows, tenant_id):
    return db_rows("SELECT * FROM messages WHERE tenant_id = :t ORDER BY provider_timestamp, id", t=tenant_id)


@pytest.mark.smoke
async def test_inbound_types_are_stored_and_published(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    now = int(time.time())
    items = [
        g.text_message(USER, "Does it come in another color?", timestamp=now - 40),
        g.image_message(USER, caption="this one", timestamp=now - 30),
        g.button_reply_message(USER, "yes", "Yes", timestamp=now - 20),
        g.reaction_message(USER, "wamid.original", "\N{THUMBS UP SIGN}", timestamp=now - 10),
        g.unsupported_message(USER, timestamp=now),
    ]
    delivery = await send.inbound(tenant["pnid"], *items, contact_name="Sheena Nelson")
    assert delivery.status == 200, delivery.text

    rows = _messages(db_rows, tenant["id"])
    # A reaction changes the message it names (here one not stored: kept pending), it is no row.
    messages = [m for m in items if m["type"] != "reaction"]
    assert [r["type"] for r in rows] == ["text", "image", "interactive", "unsupported"]
    assert {r["provider_message_id"] for r in rows} == {m["id"] for m in messages}
    (pending,) = db_rows("SELECT * FROM message_changes WHERE tenant_id = :t", t=tenant["id"])
    assert pending["kind"] == "reaction" and pending["message_id"] is None
    assert pending["target_provider_message_id"] == "wamid.original" and pending["actor"] == USER
    assert all(
        r["direction"] == "inbound" and r["status"] == "received" and r["provider"] == "business_api"
        for r in rows
    )
    conv = db_rows("SELECT * FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert len(conv) == 1 and conv[0]["wa_id"] == USER and conv[0]["contact_name"] == "Sheena Nelson"
    assert conv[0]["unread_count"] == 4
    assert int(_as_dt(conv[0]["last_inbound_at"]).replace(tzinfo=dt.UTC).timestamp()) == now
    assert conv[0]["last_message_id"] == rows[-1]["id"]

    events = published(tenant["id"], "message.received")
    assert [e["data"]["provider_message_id"] for e in events] == [m["id"] for m in messages]
    by_type = {e["data"]["type"]: e["data"] for e in events}
    assert by_type["text"]["content"] == {"text": "Does it come in another color?"}
    image = by_type["image"]["content"]
    assert (
        image["caption"] == "this one"
        and image["mime_type"] == "image/jpeg"
        and image["media_id"] == items[1]["image"]["id"]
    )
    assert by_type["interactive"]["content"]["reply_type"] == "button_reply"
    assert (
        by_type["interactive"]["content"]["id"] == "yes"
        and by_type["interactive"]["content"]["title"] == "Yes"
    )
    assert by_type["interactive"]["content"]["context"]["id"] == items[2]["context"]["id"]
    assert by_type["unsupported"]["content"]["raw"]["errors"][0]["code"] == 131051
    ids = {r["provider_message_id"]: r["id"] for r in rows}
    assert all(
        e["data"]["from"] == USER
        and e["data"]["to"] == "15550783881"
        and e["data"]["direction"] == "inbound"
        and e["data"]["contact_name"] == "Sheena Nelson"
        and e["data"]["conversation_id"] == conv[0]["id"]
        and e["data"]["message_id"] == ids[e["data"]["provider_message_id"]]
        for e in events
    )


@pytest.mark.smoke
async def test_every_entry_and_change_is_stored(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    payload = g.text_batch(2, 2, waba_id=tenant["waba"], phone_number_id=tenant["pnid"], from_=USER)
    delivery = await sender(tenant).send(payload)
    assert delivery.status == 200, delivery.text
    bodies = sorted(json.loads(r["content"])["text"] for r in _messages(db_rows, tenant["id"]))
    assert bodies == ["batch 0.0", "batch 0.1", "batch 1.0", "batch 1.1"]
    assert len(published(tenant["id"], "message.received")) == 4


async def test_one_delivery_for_two_tenants_of_one_meta_app(business_tenant, sender, db_rows):
    """One Meta app (one app secret) serving two tenants' numbers: each change lands in its tenant."""
    a = await business_tenant(app_secret="shared-app-secret-1")
    b = await business_tenant(app_secret="shared-app-secret-1")
    payload = g.text_batch(
        2, 1, waba_id=[a["waba"], b["waba"]], phone_number_id=[a["pnid"], b["pnid"]], from_=USER
    )
    assert (await sender(a).send(payload)).status == 200
    assert len(_messages(db_rows, a["id"])) == 1 and len(_messages(db_rows, b["id"])) == 1


@pytest.mark.smoke
async def test_duplicate_delivery_is_stored_once(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    message = g.text_message(USER, "once")
    delivery = await sender(tenant).inbound(tenant["pnid"], message, copies=3)
    assert delivery.status == 200
    assert len(_messages(db_rows, tenant["id"])) == 1
    assert len(published(tenant["id"], "message.received")) == 1
    conv = db_rows("SELECT unread_count FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv[0]["unread_count"] == 1


async def test_concurrent_duplicates_are_stored_once(business_tenant, sender, db_rows):
    tenant = await business_tenant()
    send = sender(tenant)
    messages = [g.text_message(USER, f"m{i}") for i in range(20)]
    payloads = [send.inbound_payload(tenant["pnid"], m) for m in messages] * 3
    results = await asyncio.gather(*(send.send(p) for p in payloads))
    assert {r.status for r in results} == {200}
    assert len(_messages(db_rows, tenant["id"])) == 20


@pytest.mark.smoke
@pytest.mark.parametrize("signature", [g.BAD_SIGNATURE, False, "sha256=zz", "md5=abc"])
async def test_bad_or_missing_signature_is_401_and_stores_nothing(
    business_tenant, sender, db_rows, published, signature
):
    tenant = await business_tenant()
    delivery = await sender(tenant).inbound(
        tenant["pnid"], g.text_message(USER, "forged"), signature=signature
    )
    assert delivery.status == 401
    assert delivery.text and '"invalid_signature"' in delivery.text
    assert _messages(db_rows, tenant["id"]) == []
    assert db_rows("SELECT * FROM conversations WHERE tenant_id = :t", t=tenant["id"]) == []
    assert published(tenant["id"]) == []


@pytest.mark.smoke
async def test_non_ascii_body_verifies_escaped_and_raw(business_tenant, sender, db_rows, webhook_url):
    tenant = await business_tenant()
    text = "Olá! Größe? 你好 \N{GRINNING FACE}"
    send = sender(tenant)
    payload = send.inbound_payload(tenant["pnid"], g.text_message(USER, text), contact_name="Zoë Ångström")
    escaped = g.serialize(payload)
    assert b"\\u00e1" in escaped  # Meta's form: ASCII with \\u escapes
    assert (await send.send(escaped)).status == 200
    # the same content as raw UTF-8 bytes (a different byte string, so a different signature)
    payload2 = send.inbound_payload(
        tenant["pnid"], g.text_message(USER, text + " 2"), contact_name="Zoë Ångström"
    )
    raw = json.dumps(payload2, ensure_ascii=False).encode()
    status, body = await g.deliver(webhook_url, raw, tenant["app_secret"])
    assert status == 200, body
    # re-serializing would break the signature: the escaped bytes signed, the raw bytes sent -> 401
    status, _ = await g.deliver(
        webhook_url, raw, tenant["app_secret"], signature=g.sign(g.serialize(payload2), tenant["app_secret"])
    )
    assert status == 401
    rows = _messages(db_rows, tenant["id"])
    bodies = [json.loads(r["content"])["text"] for r in rows]
    assert sorted(bodies) == sorted([text, text + " 2"])
    conv = db_rows("SELECT contact_name FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv[0]["contact_name"] == "Zoë Ångström"


@pytest.mark.smoke
async def test_statuses_out_of_order_end_in_the_right_state(
    app_client, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    send = sender(tenant)
    await send.inbound(tenant["pnid"], g.text_message(USER, "hi"))  # opens the fake's 24 h window
    app = app_client.server.app
    creds = CloudCredentials(tenant["pnid"], tenant["waba"], tenant["token"])

    async def outbound(body: str) -> tuple[str, str]:
        """An outbound message as messaging records it: a row, then the wamid from the Graph API."""
        result = await app["cloud_api"].send_text(creds, USER, body)
        async with app["db"].begin() as conn:
            conv = await messages_db.get_or_create_conversation(conn, tenant["id"], USER)
            row = await messages_db.create_outbound_message(
                conn, tenant["id"], conv["id"], type="text", content={"body": body}
            )
            await messages_db.advance_message_status(
                conn,
                tenant["id"],
                row["id"],
                "sent",
                provider="business_api",
                provider_message_id=result.wamid,
            )
        return row["id"], result.wamid

    # read first, delivered missing, then a late 'sent' and a duplicate 'read'
    read_id, read_wamid = await outbound("one")
    for d in await send.statuses(read_wamid, ("read", "sent", "read")):
        assert d.status == 200
    # delivered after read in one delivery, then played (voice) beats read
    played_id, played_wamid = await outbound("two")
    await send.statuses(played_wamid, ("read", "delivered"), together=True)
    await send.statuses(played_wamid, ("played",))
    # failed with its error; a later 'sent' does not hide it
    failed_id, failed_wamid = await outbound("three")
    await send.statuses(failed_wamid, ("failed", "sent"), errors=[g.failed_error(131047)])

    rows = {
        r["id"]: r
        for r in db_rows(
            "SELECT * FROM messages WHERE tenant_id = :t AND direction = 'outbound'", t=tenant["id"]
        )
    }
    assert (
        rows[read_id]["status"] == "read"
        and rows[read_id]["read_at"]
        and rows[read_id]["delivered_at"] is None
    )
    assert (
        rows[played_id]["status"] == "played"
        and rows[played_id]["delivered_at"]
        and rows[played_id]["read_at"]
    )
    failed = rows[failed_id]
    assert failed["status"] == "failed" and failed["error_code"] == "131047" and failed["failed_at"]
    assert "24 hours" in failed["error_message"]
    facts = db_rows(
        "SELECT provider_message_id, status FROM message_statuses WHERE tenant_id = :t", t=tenant["id"]
    )
    assert sorted((f["provider_message_id"], f["status"]) for f in facts) == sorted(
        [
            (read_wamid, "read"),
            (read_wamid, "sent"),
            (played_wamid, "read"),
            (played_wamid, "delivered"),
            (played_wamid, "played"),
            (failed_wamid, "failed"),
            (failed_wamid, "sent"),
        ]
    )

    status_events = [e["data"] for e in published(tenant["id"], "message.status")]
    assert [(e["message_id"], e["status"]) for e in status_events] == [
        (read_id, "read"),
        (played_id, "read"),
        (played_id, "played"),
        (failed_id, "failed"),
    ]
    [failure] = [e["data"] for e in published(tenant["id"], "message.failed")]
    assert failure["message_id"] == failed_id and failure["error"]["code"] == "131047"
    assert failure["to"] == USER and failure["direction"] == "outbound"


async def test_status_before_its_message_knows_the_wamid(business_tenant, sender, db_rows, app_client):
    """A webhook racing the send response: the fact is kept and applied when the wamid is recorded."""
    tenant = await business_tenant()
    payload = g.messages_payload(
        tenant["waba"], tenant["pnid"], statuses=[g.status("wamid.early", "delivered", USER)]
    )
    assert (await sender(tenant).send(payload)).status == 200
    app = app_client.server.app
    async with app["db"].begin() as conn:
        conv = await messages_db.get_or_create_conversation(conn, tenant["id"], USER)
        row = await messages_db.create_outbound_message(
            conn, tenant["id"], conv["id"], type="text", content={}
        )
        await messages_db.advance_message_status(
            conn, tenant["id"], row["id"], "sent", provider="business_api", provider_message_id="wamid.early"
        )
        row = await status_facts.apply_recorded_statuses(conn, tenant["id"], row["id"])
    assert row["status"] == "delivered"


@pytest.mark.smoke
async def test_cross_tenant_forgery_is_401_and_stores_nothing(business_tenant, sender, db_rows):
    a = await business_tenant()
    b = await business_tenant()
    send_a = sender(a)
    # signed with A's secret, naming B's number
    forged = g.messages_payload(b["waba"], b["pnid"], messages=[g.text_message(USER, "into B")])
    assert (await send_a.send(forged)).status == 401
    # naming A's and B's numbers, signed with A's secret: all or nothing
    mixed = g.text_batch(
        2, 1, waba_id=[a["waba"], b["waba"]], phone_number_id=[a["pnid"], b["pnid"]], from_=USER
    )
    assert (await send_a.send(mixed)).status == 401
    assert _messages(db_rows, a["id"]) == [] and _messages(db_rows, b["id"]) == []


@pytest.mark.smoke
async def test_unknown_phone_number_id_is_counted_not_stored(app_client, business_tenant, sender, db_rows):
    tenant = await business_tenant()
    payload = g.messages_payload("999", "123456789", messages=[g.text_message(USER, "nobody's")])
    delivery = await sender(tenant).send(payload)
    assert delivery.status == 200
    assert db_rows("SELECT id FROM messages") == []
    assert app_client.server.app["webhook_counters"].unknown_phone_number_id == 1


async def test_inactive_tenant_number_is_not_stored(app_client, business_tenant, sender, db_rows):
    tenant = await business_tenant()
    resp = await app_client.put("/api/whatsapp/config", json={"is_active": False}, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    assert (await sender(tenant).inbound(tenant["pnid"], g.text_message(USER, "x"))).status == 200
    assert _messages(db_rows, tenant["id"]) == []


@pytest.mark.smoke
async def test_body_limits_and_malformed_json(app_client, business_tenant, webhook_url):
    tenant = await business_tenant()
    big = b'{"entry":[],"pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    status, body = await g.deliver(webhook_url, big, tenant["app_secret"])
    assert status == 413, body
    status, body = await g.deliver(webhook_url, b"{not json", tenant["app_secret"])
    assert status == 400 and "malformed_json" in body
    status, body = await g.deliver(webhook_url, b'["entry"]', tenant["app_secret"])
    assert status == 400 and "invalid_webhook" in body


@pytest.mark.smoke
async def test_handshake(app_client, business_tenant):
    tenant = await business_tenant()
    ok = await app_client.get(
        "/api/whatsapp/webhook",
        params={
            "hub.mode": "subscribe",
            "hub.challenge": "1158201444",
            "hub.verify_token": tenant["verify_token"],
        },
    )
    assert ok.status == 200 and ok.content_type == "text/plain" and await ok.text() == "1158201444"
    for params in (
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "wrong-token"},
        {"hub.mode": "unsubscribe", "hub.challenge": "1", "hub.verify_token": tenant["verify_token"]},
        {"hub.mode": "subscribe", "hub.verify_token": tenant["verify_token"]},
        {},
    ):
        resp = await app_client.get("/api/whatsapp/webhook", params=params)
        assert resp.status == 403, params
        assert (await resp.json())["error"]["code"] == "verification_failed"
    # an inactive tenant's token no longer verifies
    await app_client.put("/api/whatsapp/config", json={"is_active": False}, headers=tenant["headers"])
    resp = await app_client.get(
        "/api/whatsapp/webhook",
        params={"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": tenant["verify_token"]},
    )
    assert resp.status == 403


@pytest.mark.mariadb
async def test_database_unreachable_is_503_then_recovers(app_client, business_tenant, sender, db_rows):
    tenant = await business_tenant()
    send = sender(tenant)
    app = app_client.server.app
    db = app["db"]
    message = g.text_message(USER, "during the outage")
    real_engine = db.engine
    # MariaDB unreachable: every new connection goes to a port nobody listens on
    db.engine = create_async_engine(
        "mysql+aiomysql://root@127.0.0.1:9/nowhere", connect_args={"connect_timeout": 1}
    )
    try:
        app["webhook_directory"].invalidate()  # cold cache: the routing lookup fails too
        delivery = await send.inbound(tenant["pnid"], message)
        assert delivery.status == 503, delivery.text
        assert (
            await app_client.get(
                "/api/whatsapp/webhook",
                params={
                    "hub.mode": "subscribe",
                    "hub.challenge": "1",
                    "hub.verify_token": tenant["verify_token"],
                },
            )
        ).status == 503
        # warm routing cache, storage down: still 503 (nothing acknowledged that is not stored)
        db.engine = real_engine
        await app["webhook_directory"].targets([tenant["pnid"]])
        db.engine = create_async_engine(
            "mysql+aiomysql://root@127.0.0.1:9/nowhere", connect_args={"connect_timeout": 1}
        )
        await app["webhook_ingester"].drop_connection()  # its held connection dies with the server
        delivery = await send.inbound(tenant["pnid"], message)
        assert delivery.status == 503, delivery.text
        assert "database_unavailable" in delivery.text
    finally:
        await db.engine.dispose()
        db.engine = real_engine
    assert _messages(db_rows, tenant["id"]) == []
    # Meta redelivers: stored once
    assert (await send.inbound(tenant["pnid"], message)).status == 200
    assert (await send.inbound(tenant["pnid"], message)).status == 200
    assert len(_messages(db_rows, tenant["id"])) == 1


@pytest.mark.mariadb
async def test_killed_connections_mid_batch_are_503_then_recover(
    app_client, business_tenant, sender, db_rows, sync_engine
):
    """MariaDB drops the pool's connections (a restart): the affected delivery is 503 or recovered by
    the pool's pre-ping; never 200 without the row, and redelivery stores once."""
    import sqlalchemy as sa

    tenant = await business_tenant()
    send = sender(tenant)
    assert (await send.inbound(tenant["pnid"], g.text_message(USER, "warm"))).status == 200
    db_name = sync_engine.url.database
    with sync_engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist WHERE db = :d AND id <> CONNECTION_ID()"
                ),
                {"d": db_name},
            )
        ]
        for pid in ids:
            with contextlib.suppress(Exception):  # gone already
                conn.execute(sa.text(f"KILL {int(pid)}"))
    message = g.text_message(USER, "after the kill")
    first = await send.inbound(tenant["pnid"], message)
    assert first.status in (200, 503)
    stored = [r for r in _messages(db_rows, tenant["id"]) if r["provider_message_id"] == message["id"]]
    assert len(stored) == (1 if first.status == 200 else 0)
    assert (await send.inbound(tenant["pnid"], message)).status == 200
    assert (
        len([r for r in _messages(db_rows, tenant["id"]) if r["provider_message_id"] == message["id"]]) == 1
    )


@pytest.mark.mariadb
async def test_race_with_another_writer_is_stored_once_with_one_event(
    app_client, business_tenant, sender, db_rows, monkeypatch
):
    """Another node stores the wamid between our duplicate check and our INSERT (simulated: the check
    misses it once): the batch is rolled back and stored once more; 200, one row, one event."""
    from control_plane.db import inbound_sql

    tenant = await business_tenant()
    send = sender(tenant)
    message = g.text_message(USER, "raced")
    assert (await send.inbound(tenant["pnid"], message)).status == 200
    real = inbound_sql.existing_wamids_sql
    calls = []

    def miss_once(tenant_id, by_provider):
        calls.append(1)
        sql = real(tenant_id, by_provider)
        return sql + " AND 1 = 0" if len(calls) == 1 else sql

    monkeypatch.setattr(inbound_sql, "existing_wamids_sql", miss_once)
    assert (await send.inbound(tenant["pnid"], message)).status == 200
    assert len(calls) == 2
    assert len(_messages(db_rows, tenant["id"])) == 1
    events = db_rows(
        "SELECT * FROM event_log WHERE tenant_id = :t AND type = 'message.received'", t=tenant["id"]
    )
    assert len(events) == 1
    conv = db_rows("SELECT * FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert [c["unread_count"] for c in conv] == [1]


async def test_known_contacts_take_the_fast_path_and_counts_add_up(
    app_client, business_tenant, sender, db_rows, published
):
    """The first message of a contact learns its conversation id; later ones reuse it (one round trip),
    a redelivery of a stored wamid falls back to the checked path: counted once, published once."""
    tenant = await business_tenant()
    send = sender(tenant)
    sent = [g.text_message(USER, f"n{i}") for i in range(3)]
    for message in sent:
        assert (await send.inbound(tenant["pnid"], message)).status == 200
    ingester = app_client.server.app["webhook_ingester"]
    if ingester._driver is not None:  # MariaDB: the fast path learned the conversation's id
        assert (tenant["id"], USER) in ingester._conversation_ids
    assert (await send.inbound(tenant["pnid"], sent[1])).status == 200  # a redelivery
    stored = _messages(db_rows, tenant["id"])
    assert sorted(m["provider_message_id"] for m in stored) == sorted(m["id"] for m in sent)
    assert len({m["conversation_id"] for m in stored}) == 1
    [conv] = db_rows("SELECT * FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv["unread_count"] == 3
    assert len(published(tenant["id"], "message.received")) == 3


@pytest.mark.mariadb
async def test_two_writers_store_once_and_keep_the_ladder(
    app_client, business_tenant, sender, db_rows, published, monkeypatch
):
    """Two writers (two nodes' inbound services) committing at once: duplicates across them stored
    once, seqs gapless, and statuses racing each other never move a message backwards."""
    from control_plane.messaging.inbound import InboundService

    app = app_client.server.app
    first = app["inbound"]
    other = InboundService(app["db"], lambda: app["events"])  # another node's
    other.start()

    own_submit, deliveries = first.submit, []

    async def alternate(works):  # message deliveries alternate between the two nodes
        deliveries.append(works)
        statuses = any(w.statuses for w in works)
        await (own_submit if statuses or len(deliveries) % 2 else other.submit)(works)

    monkeypatch.setattr(first, "submit", alternate)
    try:
        tenant = await business_tenant()
        send = sender(tenant)
        await send.inbound(tenant["pnid"], g.text_message(USER, "hi"))
        creds = CloudCredentials(tenant["pnid"], tenant["waba"], tenant["token"])
        result = await app["cloud_api"].send_text(creds, USER, "out")
        async with app["db"].begin() as conn:
            conv = await messages_db.get_or_create_conversation(conn, tenant["id"], USER)
            row = await messages_db.create_outbound_message(
                conn, tenant["id"], conv["id"], type="text", content={"body": "out"}
            )
            await messages_db.advance_message_status(
                conn,
                tenant["id"],
                row["id"],
                "sent",
                provider="business_api",
                provider_message_id=result.wamid,
            )
        messages = [g.text_message(f"1650555{i:04d}", f"m{i}") for i in range(30)]
        payloads = [send.inbound_payload(tenant["pnid"], m) for m in messages] * 2
        status_payloads = [
            g.messages_payload(
                tenant["waba"], tenant["pnid"], statuses=[g.status(result.wamid, status, USER)]
            )
            for status in ("read", "delivered", "sent", "delivered")
        ]
        results = await asyncio.gather(*(send.send(p) for p in [*payloads, *status_payloads]))
        assert {r.status for r in results} == {200}
        assert first.stats.batches + other.stats.batches >= 2
        assert len(deliveries) == len(results) + 1
    finally:
        monkeypatch.undo()
        await other.stop()
    assert len(_messages(db_rows, tenant["id"])) == 1 + 30 + 1
    received = published(tenant["id"], "message.received")
    assert len(received) == 31
    seqs = [e["seq"] for e in published(tenant["id"])]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    [out] = db_rows("SELECT * FROM messages WHERE tenant_id = :t AND direction = 'outbound'", t=tenant["id"])
    assert out["status"] == "read" and out["read_at"]
    assert [e["data"]["status"] for e in published(tenant["id"], "message.status")] == ["read"]


async def test_the_database_enforces_the_ladder(app_client, business_tenant):
    """An UPDATE computed from a stale read (another writer moved the message meanwhile) cannot move it
    back, nor overwrite a status time."""
    tenant = await business_tenant()
    app = app_client.server.app
    async with app["db"].begin() as conn:
        conv = await messages_db.get_or_create_conversation(conn, tenant["id"], USER)
        row = await messages_db.create_outbound_message(
            conn, tenant["id"], conv["id"], type="text", content={"body": "x"}
        )
        read_at = dt.datetime(2030, 1, 1, 12, 0, 0)
        await conn.execute(
            messages_db.guarded_update(tenant["id"], row["id"], {"status": "read", "read_at": read_at})
        )
        stale = await messages_db.get_message(conn, tenant["id"], row["id"])
        await conn.execute(
            messages_db.guarded_update(
                tenant["id"],
                row["id"],
                {"status": "delivered", "delivered_at": read_at, "read_at": dt.datetime(2031, 1, 1)},
            )
        )
        after = await messages_db.get_message(conn, tenant["id"], row["id"])
    assert stale["status"] == after["status"] == "read"
    assert after["read_at"] == read_at and after["delivered_at"] == read_at
