"""Socket.IO relay against a running app, with python-socketio and Node's socket.io-client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from control_plane import events as ev
from control_plane.db.engine import utcnow
from control_plane.realtime.publisher import make_envelope
from tests.realtime.conftest import wait_until

pytestmark = pytest.mark.mariadb
KINDS = ["py", "node"]


async def produce(node, tenant_id: str, n: int, *, every: int = 10) -> list[dict]:
    """Publish ``n`` events, yielding to the loop now and then so deliveries interleave."""
    out = []
    for i in range(n):
        out.append(await node.events.publish(tenant_id, ev.MESSAGE_RECEIVED, {"i": i}))
        if i % every == 0:
            await asyncio.sleep(0)
    return out


@pytest.mark.parametrize("kind", KINDS)
async def test_tenant_sees_only_its_own_events(node, new_tenant, consumers, kind):
    a, b = await new_tenant(node, "a"), await new_tenant(node, "b")
    ca, cb = consumers(kind), consumers(kind)
    await ca.connect(node.url, {"token": a["key"]})
    await cb.connect(node.url, {"token": b["key"]})
    await asyncio.gather(produce(node, a["id"], 20), produce(node, b["id"], 15))
    await wait_until(lambda: len(ca.events) >= 20 and len(cb.events) >= 15, what="both tenants' events")
    await node.events.publish(b["id"], ev.SESSION_STATE, {"state": "ready"})
    await wait_until(lambda: len(cb.events) >= 16, what="marker")
    assert ca.tenants() == {a["id"]} and ca.seqs() == list(range(1, 21))
    assert cb.tenants() == {b["id"]} and cb.seqs() == list(range(1, 17))
    name, env = cb.events[-1]
    assert name == ev.SESSION_STATE and env["type"] == name and env["data"] == {"state": "ready"}
    assert env["ts"].endswith("Z") and set(env) == {"seq", "tenant_id", "type", "ts", "data"}


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_missing_or_revoked_credentials_are_refused(
    node, new_tenant, consumers, admin_headers, kind
):
    a = await new_tenant(node)
    cases = [
        ({"token": "wk_" + "0" * 40}, "invalid_credentials"),
        ({}, "missing_credentials"),
        ({"token": a["key"], "tenant_id": "f" * 32}, "forbidden"),
        ({"token": admin_headers["Authorization"][7:], "since": 3}, "invalid_since"),
        ({"token": admin_headers["Authorization"][7:], "tenant_id": "e" * 32}, "tenant_not_found"),
        ({"token": a["key"], "since": "x"}, "invalid_since"),
    ]
    for auth, code in cases:
        c = consumers(kind)
        await c.connect(node.url, auth, expect_ok=False)
        await wait_until(lambda c=c: c.errors, what=f"refusal {code}")
        assert not c.connected and c.errors[0]["data"]["code"] == code, (auth, c.errors)
        assert c.errors[0]["message"]
    tenant_url = f"{node.url}/api/tenants/{a['id']}"
    async with aiohttp.ClientSession() as http:
        await http.patch(tenant_url, json={"is_active": False}, headers=admin_headers)
        c = consumers(kind)
        await c.connect(node.url, {"token": a["key"]}, expect_ok=False)
        await wait_until(lambda: c.errors, what="inactive refusal")
        assert c.errors[0]["data"]["code"] == "tenant_inactive"
        await http.patch(tenant_url, json={"is_active": True}, headers=admin_headers)
        keys = await (await http.get(f"{tenant_url}/api-keys", headers=admin_headers)).json()
        for key in keys["api_keys"]:
            await http.delete(f"{tenant_url}/api-keys/{key['id']}", headers=admin_headers)
    c = consumers(kind)
    await c.connect(node.url, {"token": a["key"]}, expect_ok=False)
    await wait_until(lambda: c.errors, what="revoked refusal")
    assert c.errors[0]["data"]["code"] == "invalid_credentials"


@pytest.mark.parametrize("kind", KINDS)
async def test_open_connections_are_closed_when_their_key_or_tenant_goes(
    node, new_tenant, consumers, admin_headers, sync_engine, kind
):
    a, b, c = await new_tenant(node, "a"), await new_tenant(node, "b"), await new_tenant(node, "c")
    ca, cb, cc, admin = consumers(kind), consumers(kind), consumers(kind), consumers(kind)
    for consumer, tenant in ((ca, a), (cb, b), (cc, c)):
        await consumer.connect(node.url, {"token": tenant["key"]})
    await admin.connect(node.url, {"token": admin_headers["Authorization"][7:]})
    await wait_until(lambda: all(x.connected for x in (ca, cb, cc, admin)), what="connected")
    async with aiohttp.ClientSession() as http:
        keys = await (
            await http.get(f"{node.url}/api/tenants/{a['id']}/api-keys", headers=admin_headers)
        ).json()
        resp = await http.delete(
            f"{node.url}/api/tenants/{a['id']}/api-keys/{keys['api_keys'][0]['id']}", headers=admin_headers
        )
        assert resp.status == 204
        await wait_until(lambda: not ca.connected, what="revoked key's connection closed")
        resp = await http.patch(
            f"{node.url}/api/tenants/{b['id']}", json={"is_active": False}, headers=admin_headers
        )
        assert resp.status == 200
        await wait_until(lambda: not cb.connected, what="deactivated tenant's connection closed")
    assert cc.connected and admin.connected  # the others are untouched
    # Another node revokes c's key straight in the shared database: the periodic re-check finds it.
    with sync_engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE tenant_id = %s", (c["id"],)
        )
    assert await node.app["realtime_relay"].recheck_credentials() == 1
    await wait_until(lambda: not cc.connected, what="connection of a key revoked elsewhere closed")
    await node.events.publish(c["id"], ev.SESSION_STATE, {"state": "ready"})
    await wait_until(lambda: admin.events, what="the admin still receives")
    assert not ca.events and not cb.events and not cc.events


@pytest.mark.parametrize("kind", KINDS)
async def test_reconnect_with_since_gets_the_rest_in_order_while_events_keep_coming(
    node, new_tenant, consumers, kind
):
    a = await new_tenant(node)
    await produce(node, a["id"], 30)
    first = consumers(kind)
    await first.connect(node.url, {"token": a["key"], "since": 0})
    await wait_until(lambda: len(first.events) >= 30, what="initial replay")
    await first.close()
    last_seen = first.seqs()[-1]
    assert first.seqs() == list(range(1, 31))

    async def keep_producing():
        await produce(node, a["id"], 300, every=3)

    producer = asyncio.create_task(keep_producing())
    await wait_until(lambda: producer.done() or node.events.stats["events"] >= 60, what="producer running")
    second = consumers(kind)
    await second.connect(node.url, {"token": a["key"], "since": last_seen - 10})
    await producer
    tail = await node.events.publish(a["id"], ev.MESSAGE_STATUS, {"status": "read"})
    await wait_until(lambda: second.seqs()[-1:] == [tail["seq"]], 15, what="caught up to the last event")
    assert second.seqs() == list(range(last_seen - 9, tail["seq"] + 1))


async def test_live_only_connection_gets_what_comes_after_connecting(node, new_tenant, consumers):
    a = await new_tenant(node)
    await produce(node, a["id"], 5)
    c = consumers("py")
    await c.connect(node.url, {"token": a["key"]})
    await produce(node, a["id"], 5)
    await wait_until(lambda: len(c.events) >= 5, what="live events")
    assert c.seqs() == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("kind", KINDS)
async def test_admin_subscribes_to_one_tenant_or_to_all(node, new_tenant, consumers, admin_headers, kind):
    admin = admin_headers["Authorization"][7:]
    a, b = await new_tenant(node), await new_tenant(node)
    await produce(node, a["id"], 3)
    one, every = consumers(kind), consumers(kind)
    await one.connect(node.url, {"token": admin, "tenant_id": a["id"], "since": 1})
    await every.connect(node.url, {"token": admin})
    await produce(node, a["id"], 2)
    await produce(node, b["id"], 2)
    await wait_until(lambda: len(one.events) >= 4 and len(every.events) >= 4, what="admin events")
    assert one.seqs() == [2, 3, 4, 5] and one.tenants() == {a["id"]}
    assert every.seqs(a["id"]) == [4, 5] and every.seqs(b["id"]) == [1, 2]


async def test_two_nodes_share_mariadb_and_redis(start_node, new_tenant, consumers, redis_url):
    one = await start_node(REDIS_URL=redis_url)
    two = await start_node(REDIS_URL=redis_url)
    a, b = await new_tenant(one), await new_tenant(one)
    on_two, node_on_one = consumers("py"), consumers("node")
    await on_two.connect(two.url, {"token": a["key"]})
    await node_on_one.connect(one.url, {"token": a["key"]})
    other = consumers("py")
    await other.connect(two.url, {"token": b["key"]})
    env = await one.events.publish(a["id"], ev.MESSAGE_RECEIVED, {"from": "15550001111"})
    await wait_until(lambda: on_two.seqs() == [env["seq"]], what="event from node one on node two")
    # Both nodes publish for the same tenant at once: one gapless sequence, in order, everywhere.
    await asyncio.gather(produce(one, a["id"], 100, every=2), produce(two, a["id"], 100, every=2))
    await wait_until(
        lambda: len(on_two.events) >= 201 and len(node_on_one.events) >= 201, 15, what="interleaved events"
    )
    assert on_two.seqs() == list(range(1, 202)) == node_on_one.seqs()
    assert other.events == []


async def test_out_of_order_emits_are_delivered_in_seq_order(node, new_tenant, consumers):
    a = await new_tenant(node)
    c = consumers("py")
    await c.connect(node.url, {"token": a["key"]})
    db, events = node.app["db"], node.events
    envs = []
    for i in range(3):
        async with db.begin() as conn:
            envs.append(await events.append(conn, a["id"], ev.MESSAGE_SENT, {"i": i}))
    await events.emit([envs[2]])  # as if another node's emit overtook the first two
    await events.emit([envs[0], envs[1]])
    await wait_until(lambda: len(c.events) >= 3, what="three events")
    await node.events.publish(a["id"], ev.MESSAGE_SENT, {"i": 3})
    await wait_until(lambda: len(c.events) >= 4, what="fourth event")
    assert c.seqs() == [1, 2, 3, 4]


async def test_a_seq_missing_from_the_log_does_not_stall_delivery(node, new_tenant, consumers):
    a = await new_tenant(node)
    c = consumers("py")
    await c.connect(node.url, {"token": a["key"]})
    await node.events.publish(a["id"], ev.MESSAGE_SENT, {"i": 1})
    # Contract violation: emitted, never committed. Delivery gives up waiting for seq 2 and 3.
    await node.events.emit([make_envelope(a["id"], 4, ev.MESSAGE_SENT, utcnow(), {"i": 4}, '{"i":4}')])
    await wait_until(lambda: len(c.events) >= 2, what="event after the gap")
    assert c.seqs() == [1, 4]


async def test_slow_client_is_cut_off_then_resumes_with_since(node, new_tenant, consumers):
    a = await new_tenant(node)
    relay = node.app["realtime_relay"]
    relay.max_queue = 5
    c = consumers("py")
    await c.connect(node.url, {"token": a["key"]})
    await asyncio.gather(*(node.events.publish(a["id"], ev.MESSAGE_RECEIVED, {"i": i}) for i in range(40)))
    await wait_until(lambda: not c.connected, what="slow client cut off")
    assert relay.stats["slow_disconnects"] == 1 and 0 < len(c.events) < 40
    relay.max_queue = 2000
    again = consumers("py")
    await again.connect(node.url, {"token": a["key"], "since": c.seqs()[-1]})
    await wait_until(lambda: len(c.events) + len(again.events) >= 40, what="the rest")
    assert c.seqs() + again.seqs() == list(range(1, 41))


async def test_publisher_survives_its_database_connection_being_killed(node, new_tenant, sync_engine):
    a = await new_tenant(node)
    events = node.events
    await events.publish(a["id"], ev.MESSAGE_SENT, {"i": 1})
    killed = {}
    for w in events._logs:
        w.PING_IDLE_S = 0  # an idle connection is checked before use; here: always
        if w._driver is None:
            continue
        async with w._driver.cursor() as cur:
            await cur.execute("SELECT CONNECTION_ID()")
            (conn_id,) = await cur.fetchone()
        with sync_engine.connect() as conn:
            conn.exec_driver_sql(f"KILL {int(conn_id)}")
        killed[w] = (w._driver, w._used_at)
    assert killed
    # The writers take batches in turn: publish until each writer whose connection was killed
    # has been used again (it must notice, reconnect, and lose nothing).
    seq = 1
    for _ in range(50):
        env = await events.publish(a["id"], ev.MESSAGE_SENT, {"i": seq + 1})
        seq += 1
        assert env["seq"] == seq
        if all(w._used_at != used for w, (_d, used) in killed.items()):
            break
    for w, (driver, used) in killed.items():
        assert w._used_at != used and w._driver is not driver


async def test_a_connection_its_catch_up_cannot_see_established_is_cut_off_then_resumes(
    node, new_tenant, consumers, monkeypatch
):
    # If the catch-up never sees the connection established (CONNECT_WAIT_S), the connection must
    # not stay open in catch-up, sent nothing: it is cut off and resumes with since.
    a = await new_tenant(node)
    relay = node.app["realtime_relay"]
    real_wait = relay._wait_connected
    calls = []

    async def not_seen(sub):
        calls.append(sub.sid)
        return False if len(calls) == 1 else await real_wait(sub)

    monkeypatch.setattr(relay, "_wait_connected", not_seen)
    first = [await node.events.publish(a["id"], ev.MESSAGE_SENT, {"i": i}) for i in range(3)]
    c = consumers("py")
    await c.connect(node.url, {"token": a["key"], "since": 0}, expect_ok=False)
    await wait_until(lambda: not c.sio.connected, what="the unseen connection cut off")
    assert c.events == [] and len(calls) == 1
    again = consumers("py")
    await again.connect(node.url, {"token": a["key"], "since": 0})
    await node.events.publish(a["id"], ev.MESSAGE_SENT, {"i": 3})
    await wait_until(lambda: len(again.events) >= 4, what="replay and live event")
    assert again.seqs() == [e["seq"] for e in first] + [4]
