"""The real Node bridge on the scripted driver, driven through control_plane.bridge.protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from control_plane.bridge import protocol as p

REPO = Path(__file__).resolve().parents[2]
MAIN_JS = REPO / "bridge" / "src" / "main.js"
NODE = shutil.which("node") or "node"


async def test_hello_then_starting_then_qr(spawn_bridge):
    b = await spawn_bridge(tenant="acme-1")
    qr = await b.wait_event(p.EVENT_QR)
    hello = b.events[0]
    assert hello.name == p.EVENT_HELLO
    assert hello.data["protocol"] == p.PROTOCOL_VERSION
    assert hello.data["driver"] == "scripted"
    assert hello.data["pid"] == b.pid
    assert hello.data["tenant"] == "acme-1"
    assert hello.data["browser_pid"] is None
    assert hello.data["node_version"] and hello.data["bridge_version"]
    assert b.events[1].name == p.EVENT_STATE and b.events[1].data == {"state": "starting"}
    assert qr.data["attempt"] == 1 and qr.data["qr"].startswith("2@")
    assert qr.data["expires_at"] > qr.ts
    await b.wait_state(p.STATE_QR)
    state = await b.conn.request(p.CMD_GET_STATE)
    assert state["state"] == "qr" and state["qr_attempt"] == 1
    assert (b.session_dir / "tmp").is_dir()


async def test_qr_rotates_with_increasing_attempts(spawn_bridge):
    b = await spawn_bridge(qr_interval_ms=100)
    third = await b.wait_event(p.EVENT_QR, lambda d: d["attempt"] == 3)
    qrs = b.named(p.EVENT_QR)
    assert [e.data["attempt"] for e in qrs[:3]] == [1, 2, 3]
    assert len({e.data["qr"] for e in qrs}) == len(qrs)
    assert third.data["expires_at"] == pytest.approx(third.ts + 100, abs=5)


async def test_scan_to_ready_with_deterministic_number(spawn_bridge, sessions_root):
    b = await spawn_bridge(tenant="acme")
    ready = await b.ready()
    assert [e.data["state"] for e in b.named(p.EVENT_STATE)] == ["starting", "qr", "authenticated", "ready"]
    number = ready.data["number"]
    assert number.isdigit() and len(number) == 11
    assert ready.data["wid"] == f"{number}@c.us"
    state = await b.conn.request(p.CMD_GET_STATE)
    assert (state["state"], state["wid"], state["number"]) == ("ready", ready.data["wid"], number)
    other = await spawn_bridge(tenant="acme", session_dir=sessions_root / "elsewhere")
    assert (await other.ready()).data["number"] == number


async def test_restart_restores_the_saved_session(spawn_bridge):
    first = await spawn_bridge()
    await first.ready()
    await first.conn.request(p.CMD_STOP)
    assert await first.wait_exit() == p.EXIT_CLEAN
    second = await spawn_bridge()
    await second.wait_event(p.EVENT_READY)
    assert not second.named(p.EVENT_QR)


async def test_send_text_gets_id_and_sent_ack_then_read(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    result = await b.conn.request(p.CMD_SEND, {"to": "15550001111", "type": "text", "text": "hello"})
    assert result["id"].startswith("true_15550001111@c.us_")
    assert isinstance(result["timestamp"], int)
    sent = await b.wait_event(p.EVENT_MESSAGE_ACK, lambda d: d["id"] == result["id"])
    assert sent.data == {"id": result["id"], "to": "15550001111@c.us", "ack": 1, "status": "sent"}
    await b.conn.request(p.CMD_SANDBOX_ACK, {"id": result["id"], "ack": 3})
    read = await b.wait_event(p.EVENT_MESSAGE_ACK, lambda d: d["ack"] == 3)
    assert read.data["status"] == "read"


async def test_send_media_location_and_reply(spawn_bridge, tmp_path):
    b = await spawn_bridge()
    await b.ready()
    media = {
        "base64": base64.b64encode(b"%PDF-1.4").decode(),
        "mimetype": "application/pdf",
        "filename": "a.pdf",
    }
    r1 = await b.conn.request(
        p.CMD_SEND, {"to": "15550001111", "type": "media", "media": media, "caption": "c"}
    )
    f = tmp_path / "pic.jpg"
    f.write_bytes(b"\xff\xd8\xff")
    r2 = await b.conn.request(
        p.CMD_SEND, {"to": "15550001111@c.us", "media": {"path": str(f)}, "as_document": True}
    )
    loc = {"latitude": 52.52, "longitude": 13.4, "description": "Berlin"}
    r3 = await b.conn.request(p.CMD_SEND, {"to": "15550001111", "location": loc, "reply_to": r1["id"]})
    assert len({r1["id"], r2["id"], r3["id"]}) == 3
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SEND, {"to": "1555", "media": {"path": str(tmp_path / "missing")}})
    assert err.value.code == p.ERR_BAD_REQUEST


async def test_incoming_message_event(spawn_bridge):
    b = await spawn_bridge()
    ready = await b.ready()
    r = await b.conn.request(
        p.CMD_SANDBOX_INCOMING, {"from": "15557654321", "text": "hi there", "notify_name": "Ann"}
    )
    msg = await b.wait_event(p.EVENT_MESSAGE)
    assert msg.data["id"] == r["id"]
    assert msg.data["from"] == msg.data["chat_id"] == "15557654321@c.us"
    assert msg.data["to"] == ready.data["wid"]
    assert msg.data["from_me"] is False and msg.data["type"] == "chat" and msg.data["body"] == "hi there"
    assert msg.data["has_media"] is False and msg.data["notify_name"] == "Ann"
    await b.conn.request(
        p.CMD_SANDBOX_INCOMING, {"from": "15557654321", "location": {"latitude": 1.5, "longitude": 2.5}}
    )
    loc = await b.wait_event(p.EVENT_MESSAGE, lambda d: d["type"] == "location")
    assert loc.data["location"]["latitude"] == 1.5
    assert await b.conn.request(p.CMD_MARK_READ, {"chat_id": "15557654321@c.us"}) == {}


async def test_large_media_line_arrives_whole(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB -> a 4 MiB line
    data = base64.b64encode(payload).decode()
    await b.conn.request(
        p.CMD_SANDBOX_INCOMING,
        {"from": "15557654321", "type": "image", "media": {"base64": data, "mimetype": "image/jpeg"}},
    )
    msg = await b.wait_event(p.EVENT_MESSAGE)
    assert msg.data["has_media"] is True
    assert base64.b64decode(msg.data["media"]["data"]) == payload


async def test_command_errors(spawn_bridge):
    b = await spawn_bridge()
    await b.wait_state(p.STATE_QR)
    cases = [
        ("nope", {}, p.ERR_UNKNOWN_COMMAND),
        ("sandbox.nope", {}, p.ERR_UNKNOWN_COMMAND),
        (p.CMD_SEND, {"to": "15550001111", "text": "x"}, p.ERR_NOT_READY),
        (p.CMD_SEND, {"to": "not a number", "text": "x"}, p.ERR_BAD_REQUEST),
        (p.CMD_SEND, {"to": "15550001111", "type": "text"}, p.ERR_BAD_REQUEST),
        (p.CMD_SEND, {"to": "15550001111", "type": "sticker"}, p.ERR_BAD_REQUEST),
        (p.CMD_MARK_READ, {"chat_id": "15550001111"}, p.ERR_NOT_READY),
        (p.CMD_SANDBOX_INCOMING, {"from": "1555000111", "text": "x"}, p.ERR_NOT_READY),
        (p.CMD_REQUEST_PAIRING_CODE, {}, p.ERR_BAD_REQUEST),
    ]
    for cmd, args, code in cases:
        with pytest.raises(p.BridgeCommandFailed) as err:
            await b.conn.request(cmd, args)
        assert err.value.code == code, (cmd, args, err.value)
    await b.conn.request(p.CMD_SANDBOX_SCAN)
    await b.wait_event(p.EVENT_READY)
    with pytest.raises(p.BridgeCommandFailed) as err:
        await b.conn.request(p.CMD_SANDBOX_SCAN)
    assert err.value.code == p.ERR_INVALID_STATE


async def test_garbage_on_stdin_is_answered_and_ignored(spawn_bridge):
    b = await spawn_bridge()
    assert b.proc.stdin is not None
    b.proc.stdin.write(b'this is not json\n{"cmd": "get_state"}\n')
    await b.wait_event(p.EVENT_STATE)
    assert (await b.conn.request(p.CMD_GET_STATE))["state"] in ("starting", "qr")


async def test_pairing_code(spawn_bridge):
    b = await spawn_bridge()
    await b.wait_state(p.STATE_QR)
    result = await b.conn.request(p.CMD_REQUEST_PAIRING_CODE, {"phone": "+1 555 000 1111"})
    assert len(result["code"]) == 8
    code = await b.wait_event(p.EVENT_CODE)
    assert code.data == {"code": result["code"], "phone": "15550001111"}


async def test_heartbeats_count_up(spawn_bridge):
    b = await spawn_bridge(heartbeat_ms=50)
    await b.wait_event(p.EVENT_HEARTBEAT, lambda d: d["seq"] == 4)
    beats = b.named(p.EVENT_HEARTBEAT)
    assert [e.data["seq"] for e in beats[:4]] == [1, 2, 3, 4]
    assert all(e.data["rss_bytes"] > 10_000_000 for e in beats)


async def test_heartbeat_lines_start_with_the_prefix_the_control_plane_matches(sessions_root):
    """The supervisor recognises heartbeats by their first bytes without decoding them
    (protocol.HEARTBEAT_PREFIX): the bridge must write exactly that, every time."""
    proc = await asyncio.create_subprocess_exec(
        NODE, str(MAIN_JS), "--tenant", "hb", "--session-dir", str(sessions_root / "hb"),
        "--driver", "scripted", "--heartbeat-ms", "20",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    beats = []
    try:
        while len(beats) < 5:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, "the bridge ended early"
            if json.loads(line).get("event") == p.EVENT_HEARTBEAT:
                beats.append(line)
    finally:
        proc.kill()
        await proc.wait()
    assert all(line.startswith(p.HEARTBEAT_PREFIX) for line in beats), beats[0]
    assert all(json.loads(line)["data"]["seq"] == i for i, line in enumerate(beats, 1))


async def test_leak_grows_rss(spawn_bridge):
    b = await spawn_bridge(heartbeat_ms=100)
    first = await b.wait_event(p.EVENT_HEARTBEAT)
    result = await b.conn.request(p.CMD_SANDBOX_LEAK, {"mb": 64})
    assert result["held_bytes"] == 64 * 1024 * 1024
    n = len(b.events)
    await b.wait_event(
        p.EVENT_HEARTBEAT, lambda d: d["rss_bytes"] > first.data["rss_bytes"] + 60 * 1024 * 1024, after=n
    )


async def test_hang_stops_heartbeats_and_answers(spawn_bridge):
    b = await spawn_bridge(heartbeat_ms=50)
    await b.wait_event(p.EVENT_HEARTBEAT, lambda d: d["seq"] >= 2)
    await b.conn.request(p.CMD_SANDBOX_HANG)
    beats = len(b.named(p.EVENT_HEARTBEAT))
    with pytest.raises(p.BridgeTimeout):
        await b.conn.request(p.CMD_GET_STATE, timeout_s=0.4)  # 8 heartbeat intervals
    assert len(b.named(p.EVENT_HEARTBEAT)) <= beats + 1
    assert b.proc.returncode is None

    # A request still waiting when the process dies fails with BridgeClosed, as does everything after.
    pending = [asyncio.create_task(b.conn.request(p.CMD_GET_STATE, timeout_s=30)) for _ in range(3)]
    await asyncio.sleep(0)
    b.signal(signal.SIGKILL)
    assert await b.wait_exit() == -signal.SIGKILL
    errors = [await asyncio.gather(t, return_exceptions=True) for t in pending]
    errors = [e[0] for e in errors]
    assert all(isinstance(e, p.BridgeClosed) for e in errors)
    assert errors[0] is errors[1] is errors[2]
    assert b.conn.closed and b.conn.pending_count == 0
    with pytest.raises(p.BridgeClosed):
        await b.conn.request(p.CMD_GET_STATE)


async def test_sigterm_while_hung_exits_2_after_the_bound(spawn_bridge):
    b = await spawn_bridge(extra=["--stop-timeout-ms", "300"])
    await b.wait_state(p.STATE_QR)
    await b.conn.request(p.CMD_SANDBOX_HANG)
    b.signal(signal.SIGTERM)
    assert await b.wait_exit() == p.EXIT_STOP_TIMEOUT


async def test_crash_ends_the_read_loop(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    assert await b.conn.request(p.CMD_SANDBOX_CRASH) == {}
    assert await b.wait_exit() == -signal.SIGKILL
    assert b.read_task.done() and b.conn.closed
    assert not b.named(p.EVENT_ERROR)  # no goodbye
    with pytest.raises(p.BridgeClosed):
        await b.conn.request(p.CMD_GET_STATE)


async def test_crash_with_exit_code(spawn_bridge):
    b = await spawn_bridge()
    await b.wait_state(p.STATE_QR)
    await b.conn.request(p.CMD_SANDBOX_CRASH, {"exit_code": 7})
    assert await b.wait_exit() == 7


async def test_stop_exits_0(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    assert await b.conn.request(p.CMD_STOP) == {}
    assert await b.wait_exit() == p.EXIT_CLEAN
    assert (b.session_dir / "scripted-auth.json").exists()


async def test_sigterm_exits_0(spawn_bridge):
    b = await spawn_bridge()
    await b.wait_state(p.STATE_QR)
    b.signal(signal.SIGTERM)
    assert await b.wait_exit() == p.EXIT_CLEAN


async def test_stdin_closed_exits_non_zero(spawn_bridge):
    b = await spawn_bridge()
    await b.wait_state(p.STATE_QR)
    b.conn.close_writer()
    assert await b.wait_exit() == p.EXIT_STDIN_CLOSED
    error = b.named(p.EVENT_ERROR)[-1]
    assert error.data == {"code": p.FATAL_STDIN_CLOSED, "message": error.data["message"], "fatal": True}


async def test_logout_command_wipes_auth_and_exits_0(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    assert (b.session_dir / "scripted-auth.json").exists()
    await b.conn.request(p.CMD_LOGOUT)
    assert await b.wait_exit() == p.EXIT_CLEAN
    assert not (b.session_dir / "scripted-auth.json").exists()


async def test_disconnect_reports_and_exits_4(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    await b.conn.request(p.CMD_SANDBOX_DISCONNECT, {"reason": "CONFLICT"})
    assert await b.wait_exit() == p.EXIT_DISCONNECTED
    names = [e.name for e in b.events]
    assert names[-3:] == [p.EVENT_DISCONNECTED, p.EVENT_ERROR, p.EVENT_STATE]
    assert b.events[-3].data == {"reason": "CONFLICT"}
    assert b.events[-2].data["fatal"] is True and b.events[-2].data["code"] == p.FATAL_DISCONNECTED
    assert b.events[-1].data == {"state": "disconnected", "reason": "CONFLICT"}
    assert (b.session_dir / "scripted-auth.json").exists()  # a disconnect keeps the session


async def test_phone_logout_wipes_auth_and_exits_5(spawn_bridge):
    b = await spawn_bridge()
    await b.ready()
    await b.conn.request(p.CMD_SANDBOX_LOGOUT)
    assert await b.wait_exit() == p.EXIT_LOGGED_OUT
    assert b.named(p.EVENT_DISCONNECTED)[-1].data == {"reason": "LOGOUT"}
    assert b.named(p.EVENT_ERROR)[-1].data["code"] == p.FATAL_LOGGED_OUT
    assert not (b.session_dir / "scripted-auth.json").exists()


async def test_bad_cli_exits_64(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        NODE, str(MAIN_JS), "--tenant", "x", "--session-dir", "relative", "--driver", "scripted",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == p.EXIT_USAGE
    assert out == b"" and b"absolute" in err


def test_protocol_constants_match_node():
    """The Node mirror and this module name the same events, commands and exit codes."""
    script = "const p=require('./bridge/src/protocol');console.log(JSON.stringify(p))"
    # main.js is not loaded here, so console.log still writes to stdout.
    out = subprocess.run([NODE, "-e", script], cwd=REPO, capture_output=True, check=True).stdout
    js = json.loads(out)
    assert set(js["EVENTS"].values()) == p.EVENT_NAMES
    assert set(js["COMMANDS"].values()) == p.COMMAND_NAMES
    assert set(js["STATES"].values()) == p.BRIDGE_STATES
    assert js["PROTOCOL_VERSION"] == p.PROTOCOL_VERSION
    assert js["EXIT_CODES"] == {
        "CLEAN": p.EXIT_CLEAN,
        "FATAL": p.EXIT_FATAL,
        "STOP_TIMEOUT": p.EXIT_STOP_TIMEOUT,
        "STDIN_CLOSED": p.EXIT_STDIN_CLOSED,
        "DISCONNECTED": p.EXIT_DISCONNECTED,
        "LOGGED_OUT": p.EXIT_LOGGED_OUT,
        "USAGE": p.EXIT_USAGE,
    }


async def test_bridge_exits_when_its_control_plane_is_killed(sessions_root):
    """The control plane dies hard (SIGKILL): its pipes close. The orphaned bridge must exit by itself,
    not spin on a broken stderr (it once looped on EPIPE at 40% CPU, for ever)."""
    import os
    import sys

    import psutil

    parent_code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.argv[1], sys.argv[2], '--tenant', 'orphan',\n"
        "    '--session-dir', sys.argv[3], '--driver', 'scripted', '--heartbeat-ms', '100'],\n"
        "    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "p.stdout.readline()\n"  # hello: the bridge is up and writing
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    session_dir = sessions_root / "orphan"
    session_dir.mkdir()
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", parent_code, NODE, str(MAIN_JS), str(session_dir), stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    bridge_pid = int(await asyncio.wait_for(parent.stdout.readline(), 15))
    assert (await asyncio.wait_for(parent.stdout.readline(), 15)).strip() == b"up"
    parent.kill()
    await parent.wait()
    try:
        bridge = psutil.Process(bridge_pid)
        deadline = asyncio.get_running_loop().time() + 10
        while bridge.is_running() and bridge.status() != psutil.STATUS_ZOMBIE:
            assert asyncio.get_running_loop().time() < deadline, "orphaned bridge did not exit"
            await asyncio.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bridge_pid, 9)
