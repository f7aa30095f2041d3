"""The real driver's handlers for what contacts do to messages and chats, up to the network edge: a
WwebjsDriver (no browser started) gets whatsapp-web.js's own structures (Reaction, Message,
PollVote, GroupNotification, Call, built from the data its Client hands them) through the
library's event names, and must emit the protocol's events with the protocol's fields, in the
order the library fired them, with @lid ids resolved through getContactLidAndPhone (the one call
that needs WhatsApp Web's page: a stand-in answers it here) or kept when it cannot be asked."""

from __future__ import annotations

import json
import subprocess

from control_plane.bridge import protocol as p
from tests.bridge.conftest import NODE, REPO
from tests.support import unless_installed

pytestmark = unless_installed(REPO / "bridge/node_modules/whatsapp-web.js", "whatsapp-web.js not installed")

SCRIPT = r"""
const Driver = require('./src/drivers/wwebjs');
const S = (name) => require(`whatsapp-web.js/src/structures/${name}`);
const [Reaction, Message, PollVote, GroupNotification, Call] =
    ['Reaction', 'Message', 'PollVote', 'GroupNotification', 'Call'].map(S);

function driver(withPage) {
    const out = [];
    const ctx = {tenant: 't', sessionDir: '/nonexistent-wab',
                 opts: {chromePath: '/bin/false', maxInlineMediaBytes: 1000},
                 log: () => {}, emit: (n, d) => out.push([n, d]), setBrowser() {}, fatal() {}, hang() {},
                 ownMessage() {}};
    const d = new Driver(ctx);
    d.client.info = {wid: {server: 'c.us', user: '15550009999', _serialized: '15550009999@c.us'}};
    d.lookups = [];
    if (withPage) {
        d.client.pupPage = {};  // WhatsApp Web's page: only getContactLidAndPhone would use it
        d.client.getContactLidAndPhone = async (ids) => {
            d.lookups.push(...ids);
            return ids.map((lid) => ({lid, pn: lid === '111@lid' ? '15551112222@c.us' : undefined}));
        };
    }
    return {d, c: d.client, out};
}
const wid = (s) => ({server: s.split('@')[1], user: s.split('@')[0], _serialized: s});
const key = (fromMe, remote, id, participant) => ({fromMe, remote, id,
    _serialized: `${fromMe}_${remote}_${id}` + (participant ? `_${participant}` : '')});
const G = '120363000000000001@g.us';

(async () => {
    const {d, c, out} = driver(true);
    const names = ['message', 'message_create', 'message_ack', 'message_reaction', 'message_edit',
                   'message_revoke_everyone', 'vote_update', 'group_join', 'group_leave', 'call'];
    const listeners = Object.fromEntries(names.map((n) => [n, c.listenerCount(n)]));

    // A group message with media from an @lid member: its download takes a while, and the reaction
    // fired after it must still come out after it.
    const media = new Message(c, {id: key(false, G, 'M1', '111@lid'), type: 'image', t: 1700000000,
        from: wid(G), to: wid('15550009999@c.us'), author: wid('111@lid'), directPath: '/v/x',
        caption: 'look', notifyName: 'Ann'});
    media.downloadMedia = () => new Promise((resolve) =>
        setTimeout(() => resolve({mimetype: 'image/jpeg', data: 'AAAA', filename: null}), 150));
    c.emit('message', media);
    c.emit('message_reaction', new Reaction(c, {msgKey: key(false, G, 'R1', '111@lid'),
        parentMsgKey: key(false, G, 'M1', '111@lid'), senderUserJid: '111@lid', reactionText: '👍',
        timestamp: 1700000000.5, orphan: 0, read: false, ack: 1}));
    // A status post: no media download, no lookups.
    const post = new Message(c, {id: key(false, 'status@broadcast', 'S1', '15553334444@c.us'),
        type: 'image', t: 1700000000, from: 'status@broadcast', to: wid('15550009999@c.us'),
        author: wid('15553334444@c.us'), directPath: '/v/y'});
    post.downloadMedia = () => { throw new Error('downloaded a status post'); };
    c.emit('message', post);
    const mine = {id: key(true, '15557654321@c.us', 'M2'), type: 'chat', t: 1700000000,
        from: wid('15550009999@c.us'), to: wid('15557654321@c.us'), body: 'new',
        latestEditMsgKey: key(true, '15557654321@c.us', 'E1'), latestEditSenderTimestampMs: 1700000001234};
    c.emit('message_edit', new Message(c, mine), 'new', 'old');
    c.emit('message_edit', new Message(c, mine), 'same', 'same');  // not an edit: dropped
    c.emit('message_revoke_everyone', new Message(c, {...mine, type: 'revoked', body: ''}),
        new Message(c, {...mine, body: 'old'}));
    c.emit('vote_update', new PollVote(c, {sender: wid('15557654321@c.us'), selectedOptionLocalIds: [1],
        senderTimestampMs: 1700000002000, parentMsgKey: key(true, G, 'P1'),
        parentMessage: {id: key(true, G, 'P1'), type: 'poll_creation', t: 1, pollName: 'q',
            pollOptions: [{name: 'a', localId: 0}, {name: 'b', localId: 1}]}}));
    c.emit('group_join', new GroupNotification(c, {id: key(false, G, 'G1', '15550001111@c.us'),
        type: 'gp2', subtype: 'add', t: 1700000003, author: wid('15550001111@c.us'),
        recipients: [wid('111@lid'), wid('15553334444@c.us')], body: ''}));
    c.emit('group_leave', new GroupNotification(c, {id: key(false, G, 'G2', '15553334444@c.us'),
        type: 'gp2', subtype: 'leave', t: 1700000004, author: wid('15553334444@c.us'),
        recipients: [wid('15553334444@c.us')]}));
    c.emit('call', new Call(c, {id: 'CALL1', peerJid: '222@lid', offerTime: 1700000005, isVideo: true,
        isGroup: false, outgoing: false}));
    await d.out.tail;

    // No page (not logged in yet, or gone): an @lid id is kept as it is, nothing is asked.
    const bare = driver(false);
    bare.c.emit('call', new Call(bare.c, {id: 'CALL2', peerJid: '111@lid', offerTime: 1700000006}));
    await bare.d.out.tail;
    process.stderr.write('\n' + JSON.stringify({listeners, out, lookups: [...d.lookups].sort(),
        bare: bare.out}));
    process.exit(0);
})();
"""


def test_library_events_become_protocol_events_in_order():
    run = subprocess.run([NODE, "-e", SCRIPT], cwd=REPO / "bridge", capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    got = json.loads(run.stderr.decode().strip().splitlines()[-1])
    assert got["listeners"] == dict.fromkeys(got["listeners"], 1)
    events = got["out"]
    assert [name for name, _ in events] == [
        p.EVENT_MESSAGE,
        p.EVENT_MESSAGE_REACTION,
        p.EVENT_MESSAGE,
        p.EVENT_MESSAGE_EDIT,
        p.EVENT_MESSAGE_REVOKE,
        p.EVENT_VOTE_UPDATE,
        p.EVENT_GROUP_JOIN,
        p.EVENT_GROUP_LEAVE,
        p.EVENT_CALL,
    ]
    for name, data in events:
        words = p.FORWARDED_EVENTS[name].split()
        required = {w for w in words if not w.endswith("?")}
        assert required <= set(data) <= required | {w[:-1] for w in words}, (name, data)
    group_msg, reaction, post, edit, revoke, vote, join, leave, call = (d for _, d in events)
    g = "120363000000000001@g.us"
    assert group_msg["author"] == "15551112222@c.us" and group_msg["lids"] == {"15551112222@c.us": "111@lid"}
    assert group_msg["chat_id"] == g and group_msg["notify_name"] == "Ann"
    assert group_msg["media"] == {"mimetype": "image/jpeg", "filename": None, "size": 3, "data": "AAAA"}
    assert reaction == {
        "id": f"false_{g}_R1_111@lid",
        "target": f"false_{g}_M1_111@lid",
        "chat_id": g,
        "actor": "15551112222@c.us",
        "from_me": False,
        "emoji": "👍",
        "timestamp_ms": 1700000000500,
        "lids": {"15551112222@c.us": "111@lid"},
    }
    assert post["chat_id"] == "status@broadcast" and post["author"] == "15553334444@c.us"
    assert "media" not in post
    assert edit == {
        "id": "true_15557654321@c.us_E1",
        "target": "true_15557654321@c.us_M2",
        "chat_id": "15557654321@c.us",
        "actor": "15550009999@c.us",
        "from_me": True,
        "body": "new",
        "prev_body": "old",
        "timestamp_ms": 1700000001234,
    }
    assert revoke["id"] is None and revoke["target"] == "true_15557654321@c.us_M2"
    assert revoke["prev_body"] == "old" and revoke["from_me"] is True
    assert vote == {
        "id": None,
        "target": f"true_{g}_P1",
        "chat_id": g,
        "actor": "15557654321@c.us",
        "from_me": False,
        "options": [{"name": "b", "local_id": 1}],
        "timestamp_ms": 1700000002000,
    }
    assert join == {
        "id": f"false_{g}_G1_15550001111@c.us",
        "chat_id": g,
        "type": "add",
        "members": ["15551112222@c.us", "15553334444@c.us"],
        "by": "15550001111@c.us",
        "timestamp_ms": 1700000003000,
        "lids": {"15551112222@c.us": "111@lid"},
    }
    assert (leave["type"], leave["members"], leave["by"]) == (
        "leave",
        ["15553334444@c.us"],
        "15553334444@c.us",
    )
    assert call == {
        "id": "CALL1",
        "from": "222@lid",  # WhatsApp Web does not know this one's number: kept
        "from_me": False,
        "video": True,
        "group": False,
        "timestamp_ms": 1700000005000,
    }
    assert got["lookups"] == ["111@lid", "222@lid"]  # each asked once (cached)
    ((name, bare),) = got["bare"]
    assert name == p.EVENT_CALL and bare["from"] == "111@lid" and "lids" not in bare
