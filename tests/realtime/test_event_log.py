"""The event log behind the relay: group commit, append inside a caller's transaction, the polling
API, retention. These also run on SQLite (the smoke run)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from control_plane import events as ev
from control_plane.db import events as events_db
from control_plane.db.engine import utcnow
from control_plane.realtime.retention import prune_once

pytestmark = pytest.mark.smoke


async def test_concurrent_publishes_share_commits_and_stay_gapless(client, make_tenant):
    tenants = [await make_tenant() for _ in range(4)]
    events = client.app["events"]
    batches_before = events.stats["batches"]
    envs = await asyncio.gather(
        *(events.publish(t["id"], ev.MESSAGE_SENT, {"n": i}) for i in range(100) for t in tenants)
    )
    for t in tenants:
        mine = [e for e in envs if e["tenant_id"] == t["id"]]
        assert [e["seq"] for e in mine] == list(range(1, 101))  # in call order, gapless
        assert [e["data"]["n"] for e in mine] == list(range(100))
    assert events.stats["batches"] - batches_before < 100  # coalesced: far fewer commits than events


async def test_each_tenant_commits_in_call_order_across_concurrent_transactions(client, make_tenant):
    from control_plane.realtime.publisher import EventPublisher

    a, b = await make_tenant(), await make_tenant()
    events = EventPublisher(client.app["db"], None, max_batch=7, commits_in_flight=2)
    events.start()
    try:
        envs = await asyncio.gather(
            *(
                events.publish(t["id"], ev.MESSAGE_SENT, {"n": i})
                for i in range(60)
                for t in (a, b)
                if i % 3 or t is a
            )
        )
    finally:
        await events.close()
    for t in (a, b):
        mine = [e for e in envs if e["tenant_id"] == t["id"]]
        assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1))


async def test_append_in_callers_transaction_then_emit(client, make_tenant):
    t = await make_tenant()
    events, db = client.app["events"], client.app["db"]
    async with db.begin() as conn:
        first = await events.append(conn, t["id"], ev.MESSAGE_RECEIVED, {"x": 1})
        second = await events.append(conn, t["id"], ev.MESSAGE_STATUS, {"x": 2})
    await events.emit([first, second])
    with pytest.raises(RuntimeError):
        async with db.begin() as conn:
            await events.append(conn, t["id"], ev.MESSAGE_RECEIVED, {"x": "rolled back"})
            raise RuntimeError("caller's transaction fails")
    third = await events.publish(t["id"], ev.MESSAGE_SENT, {"x": 3})
    assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]  # the rollback took its seq back
    resp = await client.get("/api/events", headers=t["headers"])
    assert [e["data"]["x"] for e in (await resp.json())["events"]] == [1, 2, 3]


async def test_append_many_numbers_in_input_order_per_tenant(client, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    events, db = client.app["events"], client.app["db"]
    await events.publish(b["id"], ev.SESSION_STATE, {"state": "ready"})
    async with db.begin() as conn:
        envs = await events.append_many(
            conn,
            [
                (a["id"], ev.MESSAGE_RECEIVED, {"n": 1}),
                (b["id"], ev.MESSAGE_STATUS, {"n": 2}),
                (a["id"], ev.MESSAGE_FAILED, {"n": 3}),
            ],
        )
    await events.emit(envs)
    assert [(e["tenant_id"], e["seq"], e["data"]["n"]) for e in envs] == [
        (a["id"], 1, 1),
        (b["id"], 2, 2),
        (a["id"], 2, 3),
    ]
    assert await events.append_many(None, []) == []


async def test_payloads_never_carry_secrets_and_names_are_checked(client, make_tenant):
    t = await make_tenant()
    events = client.app["events"]
    with pytest.raises(ValueError, match="secrets"):
        await events.publish(t["id"], ev.SESSION_STATE, {"state": "ready", "access_token": "EAAG..."})
    with pytest.raises(ValueError, match="event type"):
        await events.publish(t["id"], "Bad Type", {})
    with pytest.raises(ValueError, match="tenant"):
        await events.publish('x"; drop', ev.SESSION_STATE, {})


async def test_events_api_pages_and_is_tenant_scoped(client, make_tenant, admin_headers):
    a, b = await make_tenant(), await make_tenant()
    events = client.app["events"]
    for i in range(25):
        await events.publish(a["id"], ev.MESSAGE_RECEIVED, {"i": i, "when": dt.datetime(2025, 1, 2, 3, 4, 5)})
    await events.publish(b["id"], ev.SESSION_QR, {"qr": "2@abc", "attempt": 1})
    seen, since = [], 0
    while True:
        resp = await client.get(f"/api/events?since={since}&limit=10", headers=a["headers"])
        assert resp.status == 200
        page = await resp.json()
        seen += page["events"]
        since = page["next_since"]
        if not page["has_more"]:
            break
    assert [e["seq"] for e in seen] == list(range(1, 26)) and since == 25
    assert {e["tenant_id"] for e in seen} == {a["id"]}
    assert seen[0]["data"] == {"i": 0, "when": "2025-01-02T03:04:05.000Z"} and seen[0]["ts"].endswith("Z")
    resp = await client.get("/api/events", headers=b["headers"])
    assert [e["type"] for e in (await resp.json())["events"]] == [ev.SESSION_QR]
    resp = await client.get(f"/api/tenants/{a['id']}/events?since=20", headers=admin_headers)
    assert [e["seq"] for e in (await resp.json())["events"]] == [21, 22, 23, 24, 25]
    empty = await (await client.get("/api/events?since=25", headers=a["headers"])).json()
    assert empty == {"events": [], "next_since": 25, "has_more": False}
    for bad in ("since=-1", "limit=0", "limit=5000", "since=abc", "other=1"):
        resp = await client.get(f"/api/events?{bad}", headers=a["headers"])
        assert resp.status == 422, bad
    assert (await client.get("/api/events")).status == 401


async def test_retention_prunes_old_events_and_never_reuses_seqs(client, make_tenant, make_settings):
    t = await make_tenant()
    db, events = client.app["db"], client.app["events"]
    old = utcnow() - dt.timedelta(days=8)
    async with db.begin() as conn:
        await events_db.append_events(conn, [(t["id"], ev.MESSAGE_SENT, old, "{}")] * 3)
    kept = await events.publish(t["id"], ev.MESSAGE_SENT, {})
    assert await prune_once(db, 0) == 0  # 0 keeps everything
    assert await prune_once(db, client.app["settings"].event_retention_days) == 3
    assert client.app["settings"].event_retention_days == 7
    async with db.connect() as conn:
        left = await events_db.events_after(conn, t["id"], 0)
    assert [e["seq"] for e in left] == [kept["seq"]] == [4]
    assert (await events.publish(t["id"], ev.MESSAGE_SENT, {}))["seq"] == 5
    assert make_settings(EVENT_RETENTION_DAYS="1.5").event_retention_days == 1.5


async def test_deleting_a_tenant_removes_its_log(client, make_tenant, admin_headers):
    t = await make_tenant()
    await client.app["events"].publish(t["id"], ev.MESSAGE_SENT, {})
    assert (await client.delete(f"/api/tenants/{t['id']}", headers=admin_headers)).status == 204
    async with client.app["db"].connect() as conn:
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(events_db.event_log))).scalar()
    assert rows == 0


async def test_an_unknown_tenant_fails_alone_not_its_whole_batch(client, make_tenant):
    t = await make_tenant()
    events = client.app["events"]
    results = await asyncio.gather(
        events.publish(t["id"], ev.MESSAGE_SENT, {"n": 1}),
        events.publish("0" * 32, ev.MESSAGE_SENT, {"n": 2}),
        events.publish(t["id"], ev.MESSAGE_SENT, {"n": 3}),
        return_exceptions=True,
    )
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert [r["seq"] for r in (results[0], results[2])] == [1, 2]


async def test_group_commit_stores_exactly_what_is_sent(client, make_tenant):
    """The writer inlines payloads and seqs in its SQL: the log holds the very text and seqs the
    envelopes carry, whatever the payload (quotes, backslashes, non-ASCII, a tenant's first event)."""
    tenants = [await make_tenant() for _ in range(3)]
    events = client.app["events"]
    tricky = ['it\'s "quoted" \\ back\\slash', "ünïcödé ✓ 😀", "x'41' ; DROP TABLE event_log; --", ""]
    envs = await asyncio.gather(
        *(
            events.publish(t["id"], ev.MESSAGE_SENT, {"text": text, "n": i})
            for i, text in enumerate(tricky * 3)
            for t in tenants
        )
    )
    async with client.app["db"].connect() as conn:
        for t in tenants:
            rows = await events_db.events_after(conn, t["id"], 0, limit=100)
            mine = [e for e in envs if e["tenant_id"] == t["id"]]
            assert [r["seq"] for r in rows] == [e["seq"] for e in mine] == list(range(1, 13))
            assert [r["data"] for r in rows] == [e.data_json for e in mine]
            assert [r["type"] for r in rows] == [ev.MESSAGE_SENT] * 12


async def test_numbered_in_advance_survives_other_writers_moving_the_counters(client, make_tenant):
    # Two publishers (two nodes) and a caller's own transactions (like the webhook's) append to the
    # same tenants at once: each publisher numbers in advance from the counters it read, and the
    # database's check sends a batch whose counter moved elsewhere back to be numbered again. The
    # log stays gapless, no seq twice, and each publisher's events keep its call order.
    from control_plane.realtime.publisher import EventPublisher

    a, b = await make_tenant(), await make_tenant()
    db = client.app["db"]
    nodes = [EventPublisher(db, None, max_batch=5, commits_in_flight=3) for _ in range(2)]
    for node in nodes:
        node.start()

    async def caller_transactions() -> list:
        envs = []
        for i in range(15):
            async with db.begin() as conn:
                envs += await nodes[0].append_many(
                    conn, [(a["id"], ev.MESSAGE_RECEIVED, {"w": i}), (b["id"], ev.MESSAGE_RECEIVED, {"w": i})]
                )
            await asyncio.sleep(0)
        return envs

    try:
        published = [
            node.publish(t["id"], ev.MESSAGE_SENT, {"node": k, "n": i})
            for i in range(80)
            for k, node in enumerate(nodes)
            for t in (a, b)
        ]
        *envs, direct = await asyncio.gather(*published, caller_transactions())
    finally:
        for node in nodes:
            await node.close()
    envs += direct
    async with db.connect() as conn:
        for t in (a, b):
            stored = await events_db.events_after(conn, t["id"], 0, limit=1000)
            assert [e["seq"] for e in stored] == list(range(1, 2 * 80 + 15 + 1))  # gapless, once each
            mine = sorted((e["seq"], e["data"]) for e in envs if e["tenant_id"] == t["id"])
            assert [s for s, _ in mine] == [e["seq"] for e in stored]  # what the callers were told
            for k in range(2):
                ns = [d["n"] for _, d in mine if d.get("node") == k]
                assert ns == list(range(80))  # each node's call order
    if db.dialect in ("mysql", "mariadb"):
        assert sum(node.stats["predicted"] for node in nodes) > 0
        assert sum(node.stats["mispredicted"] for node in nodes) > 0  # the other node moved them
