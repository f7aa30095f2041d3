"""Messages created by the session's own account (whatsapp-web.js ``message_create`` with fromMe):
typed on the phone they are reported as ``message`` with ``from_me: true`` before their acks; our own
sends coming back are dropped. Scripted driver through the real bridge, plus the wwebjs driver's
handler with a stand-in Client (no browser)."""

from __future__ import annotations

import asyncio
import json
import subprocess

from control_plane.bridge import protocol as p
from tests.bridge.conftest import NODE, REPO
from tests.support import unless_installed


async def test_phone_typed_message_is_reported_before_its_ack(spawn_bridge):
    b = await spawn_bridge()
    ready = await b.ready()
    r = await b.conn.request(
        p.CMD_SANDBOX_OUTGOING,
        {"to": "+1 555 000 1111", "text": "typed on the phone", "quoted_id": "false_15550001111@c.us_AB"},
    )
    assert r["id"].startswith("true_15550001111@c.us_")
    msg = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == r["id"])
    assert msg.data["from_me"] is True and msg.data["from"] == ready.data["wid"]
    assert msg.data["to"] == msg.data["chat_id"] == "15550001111@c.us"
    assert msg.data["type"] == "chat" and msg.data["body"] == "typed on the phone"
    assert msg.data["quoted_id"] == "false_15550001111@c.us_AB" and "notify_name" not in msg.data
    ack = await b.wait_event(p.EVENT_MESSAGE_ACK, lambda d: d["id"] == r["id"])
    assert ack.data["ack"] == 1
    names = [(e.name, e.data.get("id")) for e in b.events]
    assert names.index((p.EVENT_MESSAGE, r["id"])) < names.index((p.EVENT_MESSAGE_ACK, r["id"]))
    # Media and location from the phone, and acks by the sandbox like any message of ours.
    loc = await b.conn.request(
        p.CMD_SANDBOX_OUTGOING,
        {"to": "15550001111", "location": {"latitude": 1.5, "longitude": 2.5, "description": "here"}},
    )
    got = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == loc["id"])
    assert got.data["type"] == "location" and got.data["location"]["latitude"] == 1.5
    await b.conn.request(p.CMD_SANDBOX_ACK, {"id": r["id"], "ack": 3})
    read = await b.wait_event(p.EVENT_MESSAGE_ACK, lambda d: d["id"] == r["id"] and d["ack"] == 3)
    assert read.data["to"] == "15550001111@c.us"


async def test_our_own_sends_are_not_reported_as_phone_messages(spawn_bridge):
    """The scripted driver echoes every send like message_create does (before the send resolves);
    the bridge drops the echo, even with many sends in flight, and still forwards their acks."""
    b = await spawn_bridge()
    await b.ready()
    results = await asyncio.gather(
        *(b.conn.request(p.CMD_SEND, {"to": "15550001111", "text": f"m{i}"}) for i in range(20))
    )
    phone = await b.conn.request(p.CMD_SANDBOX_OUTGOING, {"to": "15550001111", "text": "mine"})
    await b.wait_event(p.EVENT_MESSAGE, lambda d: d["id"] == phone["id"])
    for r in results:
        await b.wait_event(p.EVENT_MESSAGE_ACK, lambda d, i=r["id"]: d["id"] == i)
    await asyncio.sleep(0.2)
    reported = [e.data["id"] for e in b.named(p.EVENT_MESSAGE)]
    assert reported == [phone["id"]], reported


@unless_installed(REPO / "bridge/node_modules/whatsapp-web.js", "whatsapp-web.js not installed")
def test_wwebjs_message_create_handler():
    """WwebjsDriver with a stand-in ctx: message_create fromMe -> ctx.ownMessage(id, normalized data);
    incoming ones and status posts are left to the 'message' handler / ignored. No browser starts."""
    script = r"""
const Driver = require('./bridge/src/drivers/wwebjs');
const calls = [];
const ctx = {tenant: 't', sessionDir: '/nonexistent-wab',
             opts: {chromePath: '/bin/false', maxInlineMediaBytes: 10},
             log: () => {}, emit: (n, d) => calls.push(['emit', n, d]),
             setBrowser() {}, fatal() {}, hang() {},
             ownMessage: (id, pr) => calls.push(['own', id, pr])};
const d = new Driver(ctx);
const msg = (over) => Object.assign({id: {_serialized: 'true_1555@c.us_3EB0'}, fromMe: true,
    from: '1999@c.us', to: '1555@c.us', type: 'chat', body: 'hi', timestamp: 1700000000,
    hasMedia: false, hasQuotedMsg: false}, over);
d.client.emit('message_create', msg({}));
d.client.emit('message_create', msg({fromMe: false, id: {_serialized: 'false_x'}}));
d.client.emit('message_create', msg({to: 'status@broadcast', id: {_serialized: 'true_status'}}));
(async () => {
    const own = calls.filter((c) => c[0] === 'own');
    const data = await own[0][2];
    process.stderr.write(JSON.stringify({own: own.map((c) => c[1]), data,
        emitted: calls.filter((c) => c[0] === 'emit').length}));
    process.exit(0);
})();
"""
    out = subprocess.run([NODE, "-e", script], cwd=REPO, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stderr.decode().strip().splitlines()[-1])
    assert result["own"] == ["true_1555@c.us_3EB0"] and result["emitted"] == 0
    assert result["data"] == {
        "id": "true_1555@c.us_3EB0",
        "chat_id": "1555@c.us",
        "from": "1999@c.us",
        "to": "1555@c.us",
        "from_me": True,
        "type": "chat",
        "body": "hi",
        "timestamp": 1700000000,
        "has_media": False,
    }
