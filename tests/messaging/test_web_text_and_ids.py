"""The Web road keeps what the bridge reports whole, and survives text that is no Unicode.

- A bridge line is JSON.stringify's output: a lone surrogate in a message (an emoji cut in half) is
  written as ``"\\ud800"``. ``bridge/protocol.decode_line`` repairs it (U+FFFD) and flags the event's
  data; web_ingest stores the message with ``content.warnings`` and publishes it once, however often
  the bridge reports it. Before, the inbound writer retried that message forever ("kept and retried
  until stored") and nothing after it was stored.
- Ids are stored whole, never cut: a chat id of 200 digits, a group member of 300 (``messages.author``
  held 64), a message id of 512; one past the column is refused (not stored), the rest stored.

Lines are made by Node itself (the bridge's runtime), handed over at the supervisor's listener."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from control_plane.bridge import protocol
from control_plane.db.messages import PROVIDER_ID_LEN
from control_plane.text_repair import WARNINGS_KEY
from tests.messaging.conftest import create_tenant

WA = "16505551234"
CHAT = f"{WA}@c.us"
GROUP = "120363041234567890@g.us"


def _node_lines(events: list[dict[str, Any]], bad_body: str) -> list[bytes]:
    """Each event as the bridge writes it (JSON.stringify); ``BAD`` in a body becomes ``bad_body``, a JS
    string literal's text (``cut \\ud83d``: a lone surrogate)."""
    script = (
        "const events = JSON.parse(process.argv[1]);"
        f'const bad = "{bad_body}";'  # JS source: its \\u escape makes a lone surrogate
        "for (const e of events) { if (e.data.body === 'BAD') e.data.body = bad;"
        " process.stdout.write(JSON.stringify(e) + '\\n'); }"
    )
    out = subprocess.run(
        ["node", "-e", script, json.dumps(events)], capture_output=True, check=True, timeout=30
    )
    return out.stdout.splitlines()


def _message(pmid: str, body: str, **over: Any) -> dict[str, Any]:
    data = {"id": pmid, "chat_id": CHAT, "from": CHAT, "to": "15550001111@c.us", "type": "chat", "body": body,
            "timestamp": 1_739_321_024, "notify_name": "Ana"}  # fmt: skip
    return {"event": "message", "data": {**data, **over}, "ts": 1_739_321_024_000}


def test_decode_line_repairs_and_flags_what_node_writes():
    (line,) = _node_lines([_message("false_x_BAD", "BAD")], "cut \\ud83d")
    assert b'"cut \\ud83d"' in line  # Node's well-formed JSON.stringify escapes the lone surrogate
    event = protocol.decode_line(line)
    assert isinstance(event, protocol.BridgeEvent)
    assert event.data["body"] == "cut \ufffd"
    assert event.data[WARNINGS_KEY] == [
        {
            "code": "invalid_unicode",
            "path": "body",
            "message": "not Unicode text: lone surrogate U+D83D replaced by U+FFFD",
        }
    ]
    response = protocol.decode_line(b'{"id": 7, "ok": true, "result": {"name": "x\\udfff"}}')
    assert isinstance(response, protocol.Response) and response.result == {"name": "x\ufffd"}
    clean = protocol.decode_line(b'{"event": "message", "data": {"body": "\\ud83d\\ude00"}, "ts": 1}')
    assert isinstance(clean, protocol.BridgeEvent) and clean.data == {"body": "\N{GRINNING FACE}"}


async def test_web_messages_with_broken_text_and_long_ids(app_client, db_rows):
    tenant = await create_tenant(app_client, sandbox=True)
    ingest = app_client.server.app["dispatcher"].web_ingest
    long_chat = "9" * 200 + "@c.us"
    member = "8" * 300 + "@c.us"
    events = [
        _message("false_good", "good"),
        _message("false_bad", "BAD"),
        _message("f" * PROVIDER_ID_LEN, "long id"),
        _message("false_far", "far", chat_id=long_chat, **{"from": long_chat}),
        _message("false_group", "in a group", chat_id=GROUP, author=member, **{"from": GROUP}),
        _message("f" * (PROVIDER_ID_LEN + 1), "refused"),
    ]
    lines = _node_lines(events, "bad \\ud800 x")
    for _ in range(2):  # the bridge reports them again (a reconnect): nothing twice
        for line in lines:
            event = protocol.decode_line(line)
            assert isinstance(event, protocol.BridgeEvent)
            await ingest(tenant["id"], event.name, event.data)
        assert await ingest.flush()
    rows = db_rows(
        "SELECT m.provider_message_id, m.content, m.author, c.wa_id FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.tenant_id = :t",
        t=tenant["id"],
    )
    by_id = {r["provider_message_id"]: r for r in rows}
    assert sorted(by_id) == sorted(
        ["false_good", "false_bad", "f" * PROVIDER_ID_LEN, "false_far", "false_group"]
    )
    assert json.loads(by_id["false_good"]["content"]) == {"text": "good"}
    bad = json.loads(by_id["false_bad"]["content"])
    assert bad["text"] == "bad \ufffd x" and [w["code"] for w in bad["warnings"]] == ["invalid_unicode"]
    assert by_id["false_far"]["wa_id"] == "9" * 200
    assert (by_id["false_group"]["wa_id"], by_id["false_group"]["author"]) == (GROUP, "8" * 300)
    received = db_rows(
        "SELECT data FROM event_log WHERE tenant_id = :t AND type = 'message.received'", t=tenant["id"]
    )
    assert len(received) == 5
