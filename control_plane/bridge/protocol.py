"""Wire protocol of the Node bridge (bridge/src/protocol.js mirrors it; bridge/PROTOCOL.md documents it).

Pure module: standard library only, nothing else from control_plane.

One JSON object per line, UTF-8, in both directions:

- command (stdin):   {"id": 7, "cmd": "send", "args": {...}}
- response (stdout): {"id": 7, "ok": true, "result": {...}}
                     {"id": 7, "ok": false, "error": {"code": "not_ready", "message": "..."}}
- event (stdout):    {"event": "qr", "ts": <ms epoch>, "data": {...}}

Errors::

    BridgeError
     +-- ProtocolError         a line that is not a protocol message (read_loop logs and skips it)
     +-- BridgeClosed          end of stream: every pending request fails with ONE instance
     +-- BridgeTimeout         one request got no answer within its timeout
     +-- BridgeCommandFailed   the bridge answered ok:false (.code, .message)

Heartbeats: an idle session says nothing but ``heartbeat`` lines, so their cost is the control
plane's idle cost. ``BridgeStdoutProtocol`` hands each pipe read to ``BridgeConnection.feed_data``
inside the transport's callback (one event-loop callback per read, nothing scheduled), and with an
``on_heartbeat`` callback a line starting with ``HEARTBEAT_PREFIX`` is recognised without decoding.

Long lines: media arrives base64-encoded inside ``message`` events, so lines can be megabytes.
``BridgeConnection`` splits lines itself (``feed_data`` takes chunks; ``read_loop`` never calls
``readline``), so it does not depend on a StreamReader's ``limit``; lines longer than
``max_line_bytes`` (default ``MAX_LINE_BYTES``, 16 MiB) are dropped with a log line. Spawners may still pass
``limit=STREAM_LIMIT_BYTES`` to ``create_subprocess_exec`` for other readers of the same pipe.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane import text_repair

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 16 * 1024 * 1024
STREAM_LIMIT_BYTES = MAX_LINE_BYTES
READ_CHUNK_BYTES = 256 * 1024
# The bridge writes every event as {"event": ..., "ts": ..., "data": ...} in that order, compact
# (PROTOCOL.md), so a heartbeat line starts with these bytes and needs no JSON decoding to be seen.
HEARTBEAT_PREFIX = b'{"event":"heartbeat",'

# --- events (stdout) ---
EVENT_HELLO = "hello"
EVENT_BROWSER = "browser"
EVENT_STATE = "state"
EVENT_QR = "qr"
EVENT_CODE = "code"
EVENT_AUTHENTICATED = "authenticated"
EVENT_READY = "ready"
EVENT_MESSAGE = "message"
EVENT_MESSAGE_ACK = "message_ack"
EVENT_MESSAGE_REACTION = "message_reaction"
EVENT_MESSAGE_EDIT = "message_edit"
EVENT_MESSAGE_REVOKE = "message_revoke"
EVENT_VOTE_UPDATE = "vote_update"
EVENT_GROUP_JOIN = "group_join"
EVENT_GROUP_LEAVE = "group_leave"
EVENT_CALL = "call"
EVENT_DISCONNECTED = "disconnected"
EVENT_HEARTBEAT = "heartbeat"
EVENT_ERROR = "error"
# Events about messages and chats, with their data's keys (``?``: optional; PROTOCOL.md says what
# each means; protocol.js FORWARDED lists the same). The supervisor hands them to its message
# listeners (messaging/web_ingest.py) in the order the bridge wrote them. Ids are WhatsApp's
# (``1555...@c.us``, ``1203...@g.us``, ``<n>@lid``); an @lid one WhatsApp Web can map to a phone
# number arrives as ``<digits>@c.us``, the pair listed in ``lids`` {<phone id>: <lid>}.
_CHANGE = "id target chat_id actor from_me timestamp_ms lids?"
FORWARDED_EVENTS: dict[str, str] = {
    EVENT_MESSAGE: "id chat_id from to from_me type body timestamp has_media media? location? poll? "
    "quoted_id? notify_name? author? lids?",
    EVENT_MESSAGE_ACK: "id to ack status",
    EVENT_MESSAGE_REACTION: f"{_CHANGE} emoji",  # emoji "": the reaction was removed
    EVENT_MESSAGE_EDIT: f"{_CHANGE} body prev_body",  # id: the edit's own message id, or None
    EVENT_MESSAGE_REVOKE: f"{_CHANGE} prev_body",  # wwebjs message_revoke_everyone
    EVENT_VOTE_UPDATE: f"{_CHANGE} options",  # [{name, local_id}]: the whole current choice
    EVENT_GROUP_JOIN: "id chat_id type members by timestamp_ms lids?",  # add|invite|linked_group_join
    EVENT_GROUP_LEAVE: "id chat_id type members by timestamp_ms lids?",  # remove|leave
    EVENT_CALL: "id from from_me video group timestamp_ms lids?",
}
EVENT_NAMES = frozenset(
    {
        EVENT_HELLO,
        EVENT_BROWSER,
        EVENT_STATE,
        EVENT_QR,
        EVENT_CODE,
        EVENT_AUTHENTICATED,
        EVENT_READY,
        EVENT_DISCONNECTED,
        EVENT_HEARTBEAT,
        EVENT_ERROR,
        *FORWARDED_EVENTS,
    }
)

# --- commands (stdin) ---
CMD_GET_STATE = "get_state"
CMD_SEND = "send"
CMD_MARK_READ = "mark_read"
CMD_LOGOUT = "logout"
CMD_STOP = "stop"
CMD_REQUEST_PAIRING_CODE = "request_pairing_code"
CMD_SANDBOX_SCAN = "sandbox.scan"
CMD_SANDBOX_INCOMING = "sandbox.incoming"
CMD_SANDBOX_ACK = "sandbox.ack"
CMD_SANDBOX_DISCONNECT = "sandbox.disconnect"
CMD_SANDBOX_CRASH = "sandbox.crash"
CMD_SANDBOX_HANG = "sandbox.hang"
CMD_SANDBOX_LEAK = "sandbox.leak"
CMD_SANDBOX_LOGOUT = "sandbox.logout"
CMD_SANDBOX_OUTGOING = "sandbox.outgoing"
CMD_SANDBOX_REACTION = "sandbox.reaction"
CMD_SANDBOX_EDIT = "sandbox.edit"
CMD_SANDBOX_REVOKE = "sandbox.revoke"
CMD_SANDBOX_VOTE = "sandbox.vote"
CMD_SANDBOX_GROUP_JOIN = "sandbox.group_join"
CMD_SANDBOX_GROUP_LEAVE = "sandbox.group_leave"
CMD_SANDBOX_CALL = "sandbox.call"
CMD_SANDBOX_CONTACT = "sandbox.contact"
# Every CMD_SANDBOX_* above (scripted driver only; PROTOCOL.md's sandbox table).
SANDBOX_COMMAND_NAMES: frozenset[str] = frozenset(
    value for name, value in dict(globals()).items() if name.startswith("CMD_SANDBOX_")
)
COMMAND_NAMES = frozenset(
    {CMD_GET_STATE, CMD_SEND, CMD_MARK_READ, CMD_LOGOUT, CMD_STOP, CMD_REQUEST_PAIRING_CODE}
    | SANDBOX_COMMAND_NAMES
)

# --- bridge states (data.state of the `state` event and of get_state) ---
STATE_STARTING = "starting"
STATE_QR = "qr"
STATE_AUTHENTICATED = "authenticated"
STATE_READY = "ready"
STATE_DISCONNECTED = "disconnected"
BRIDGE_STATES = frozenset({STATE_STARTING, STATE_QR, STATE_AUTHENTICATED, STATE_READY, STATE_DISCONNECTED})

# --- ok:false error codes ---
ERR_UNKNOWN_COMMAND = "unknown_command"
ERR_BAD_REQUEST = "bad_request"
ERR_NOT_READY = "not_ready"
ERR_NOT_SUPPORTED = "not_supported"
ERR_INVALID_STATE = "invalid_state"
ERR_STOPPING = "stopping"
ERR_NOT_ON_WHATSAPP = "not_on_whatsapp"
ERR_SEND_FAILED = "send_failed"
ERR_INTERNAL = "internal"

# --- data.code of fatal `error` events ---
FATAL_INIT_FAILED = "init_failed"
FATAL_AUTH_FAILURE = "auth_failure"
FATAL_BROWSER_GONE = "browser_gone"
FATAL_DISCONNECTED = "disconnected"
FATAL_LOGGED_OUT = "logged_out"
FATAL_STDIN_CLOSED = "stdin_closed"
FATAL_STDOUT_CLOSED = "stdout_closed"
FATAL_UNCAUGHT_EXCEPTION = "uncaught_exception"
FATAL_UNHANDLED_REJECTION = "unhandled_rejection"

# --- process exit codes ---
EXIT_CLEAN = 0  # stop/logout command or SIGTERM, torn down in time
EXIT_FATAL = 1  # fatal error, reported first by an `error` event
EXIT_STOP_TIMEOUT = 2  # stop/SIGTERM: teardown exceeded --stop-timeout-ms
EXIT_STDIN_CLOSED = 3  # stdin EOF / stdout EPIPE: the control plane went away
EXIT_DISCONNECTED = 4  # WhatsApp disconnected the session (not a logout)
EXIT_LOGGED_OUT = 5  # the phone unlinked the device; the profile was wiped
EXIT_USAGE = 64  # bad command line
EXIT_CODE_NAMES = {
    EXIT_CLEAN: "clean",
    EXIT_FATAL: "fatal",
    EXIT_STOP_TIMEOUT: "stop_timeout",
    EXIT_STDIN_CLOSED: "stdin_closed",
    EXIT_DISCONNECTED: "disconnected",
    EXIT_LOGGED_OUT: "logged_out",
    EXIT_USAGE: "usage",
}

ACK_STATUS = {-1: "error", 0: "pending", 1: "sent", 2: "delivered", 3: "read", 4: "played"}


class BridgeError(Exception):
    """Base of every bridge protocol error."""


class ProtocolError(BridgeError):
    """A line that is not a valid protocol message."""


class BridgeClosed(BridgeError):
    """The bridge's stdout ended (it exited or was killed); no answer will come."""


class BridgeTimeout(BridgeError):
    """A request got no answer within its timeout (the bridge may be hung)."""


class BridgeCommandFailed(BridgeError):
    """The bridge answered ok:false."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BridgeEvent:
    name: str
    data: dict[str, Any]
    ts: int  # ms since the epoch, stamped by the bridge


@dataclass(frozen=True)
class Response:
    id: int | None
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


Message = Response | BridgeEvent


def encode_command(id: int, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    """One command line, newline included."""
    payload = {"id": id, "cmd": cmd, "args": args or {}}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def decode_line(line: bytes) -> Message:
    """Parses one stdout line into a Response or a BridgeEvent; raises ProtocolError on garbage."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    text_repair.repair_bridge_line(line, obj)  # lone surrogates -> U+FFFD, flagged (clean lines: no walk)
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    if "event" in obj:
        name, data, ts = obj.get("event"), obj.get("data", {}), obj.get("ts")
        if not isinstance(name, str) or not isinstance(data, dict) or not isinstance(ts, int):
            raise ProtocolError("malformed event")
        return BridgeEvent(name=name, data=data, ts=ts)
    if "ok" in obj and "id" in obj:
        id_ = obj["id"]
        if id_ is not None and not isinstance(id_, int):
            raise ProtocolError("response id must be an integer or null")
        if obj["ok"] is True:
            result = obj.get("result") or {}
            if not isinstance(result, dict):
                raise ProtocolError("result must be an object")
            return Response(id=id_, ok=True, result=result)
        error = obj.get("error")
        if not isinstance(error, dict):
            raise ProtocolError("ok:false without an error object")
        return Response(
            id=id_,
            ok=False,
            error_code=str(error.get("code", "unknown")),
            error_message=str(error.get("message", "")),
        )
    raise ProtocolError("neither a response nor an event")


class BridgeConnection:
    """Requests and events over one bridge's pipes.

    Its stdout comes in one of two ways: ``read_loop`` (a task owned by the caller, reading a
    StreamReader), or ``feed_data`` / ``feed_eof`` called by a ``BridgeStdoutProtocol`` right in
    the pipe's read callback, which costs no task, future or StreamReader per line -- what the
    supervisor uses, since an idle session is one heartbeat line every few seconds. Either must be
    in place for requests to get answers; at end of stream every pending request fails with one
    shared ``BridgeClosed``. ``on_event`` is called synchronously for each event, in order;
    exceptions it raises are logged. With ``on_heartbeat``, heartbeat lines are not decoded:
    ``on_heartbeat()`` is called instead of ``on_event`` (see ``HEARTBEAT_PREFIX``).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
        on_event: Callable[[BridgeEvent], None],
        *,
        on_heartbeat: Callable[[], None] | None = None,
        default_timeout_s: float = 10.0,
        max_line_bytes: int = MAX_LINE_BYTES,
        log_context: str = "",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._on_heartbeat = on_heartbeat
        self._buf = bytearray()
        self._scan_from = 0
        self._discarding = False
        self._default_timeout_s = default_timeout_s
        self._max_line_bytes = max_line_bytes
        self._log_context = log_context
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed: BridgeClosed | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def request(
        self, cmd: str, args: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Sends one command and returns its result.

        Raises BridgeCommandFailed (ok:false), BridgeTimeout, or BridgeClosed.
        """
        if self._closed is not None:
            raise self._closed
        if self._writer is None:
            raise BridgeClosed("no writer: this connection only reads")
        id_ = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        timeout = self._default_timeout_s if timeout_s is None else timeout_s
        try:
            try:
                self._writer.write(encode_command(id_, cmd, args))
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise BridgeClosed(f"cannot write to the bridge: {exc}") from None
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                raise BridgeTimeout(f"{cmd} got no answer within {timeout:g} s") from None
        finally:
            self._pending.pop(id_, None)
            if not future.done():
                future.cancel()

    def close_writer(self) -> None:
        """Closes the bridge's stdin; the bridge then exits by itself (exit code 3)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    async def read_loop(self) -> None:
        """Reads the StreamReader until end of stream, dispatching responses and events; then fails
        what is pending. (The supervisor feeds the pipe through ``BridgeStdoutProtocol`` instead.)"""
        if self._reader is None:
            raise RuntimeError("read_loop needs a reader; this connection is fed by feed_data()")
        reason = "bridge stdout closed"
        try:
            while True:
                chunk = await self._reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                self.feed_data(chunk)
        except asyncio.CancelledError:
            self._fail_pending(BridgeClosed("read loop cancelled"))
            raise
        except Exception as exc:  # a broken pipe is an end of stream too
            reason = f"bridge stdout failed: {exc!r}"
            logger.exception("%sread loop failed", self._log_context)
        self._fail_pending(BridgeClosed(reason))

    def feed_data(self, data: bytes) -> None:
        """Handles the complete lines in ``data`` (a chunk of stdout) at once, in order, and keeps a
        partial last line for the next chunk. Synchronous: no task, no future per line."""
        buf = self._buf
        if not buf and not self._discarding and data[-1:] == b"\n":
            # The common case: whole lines, usually one heartbeat. No copy into the buffer.
            if data.find(b"\n") == len(data) - 1 and len(data) <= self._max_line_bytes:
                self._handle_line(data[:-1])
                return
            for line in data[:-1].split(b"\n"):
                if len(line) > self._max_line_bytes:
                    logger.error("%sline over %d bytes dropped", self._log_context, self._max_line_bytes)
                    continue
                self._handle_line(line)
            return
        buf += data
        while True:
            nl = buf.find(b"\n", self._scan_from)
            if nl < 0:
                self._scan_from = len(buf)
                if len(buf) > self._max_line_bytes:
                    if not self._discarding:
                        logger.error("%sline over %d bytes dropped", self._log_context, self._max_line_bytes)
                    self._discarding = True
                    buf.clear()
                    self._scan_from = 0
                return
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            self._scan_from = 0
            if self._discarding:  # the tail of an over-long line
                self._discarding = False
                continue
            if len(line) > self._max_line_bytes:
                logger.error("%sline over %d bytes dropped", self._log_context, self._max_line_bytes)
                continue
            self._handle_line(line)

    def feed_eof(self, reason: str = "bridge stdout closed") -> None:
        """End of stream: every pending request fails with one ``BridgeClosed``."""
        self._buf.clear()
        self._fail_pending(BridgeClosed(reason))

    def _handle_line(self, line: bytes) -> None:
        # Heartbeat fast path: the bridge writes ``{"event":"heartbeat",...`` first on the line
        # (PROTOCOL.md), and a listener that only needs "it is alive" gets no decoding at all.
        if self._on_heartbeat is not None and line.startswith(HEARTBEAT_PREFIX):
            try:
                self._on_heartbeat()
            except Exception:
                logger.exception("%son_heartbeat failed", self._log_context)
            return
        if not line.strip():
            return
        try:
            msg = decode_line(line)
        except ProtocolError as exc:
            logger.warning("%signoring garbage line from bridge (%s): %.200r", self._log_context, exc, line)
            return
        if isinstance(msg, BridgeEvent):
            try:
                self._on_event(msg)
            except Exception:
                logger.exception("%son_event failed for %s", self._log_context, msg.name)
            return
        self._resolve(msg)

    def _resolve(self, resp: Response) -> None:
        future = self._pending.get(resp.id) if resp.id is not None else None
        if future is None:
            logger.warning(
                "%sresponse to no pending request id=%s ok=%s error=%s %s",
                self._log_context,
                resp.id,
                resp.ok,
                resp.error_code,
                resp.error_message or "",
            )
            return
        if future.done():
            return
        if resp.ok:
            future.set_result(resp.result)
        else:
            future.set_exception(BridgeCommandFailed(resp.error_code or "unknown", resp.error_message or ""))

    def _fail_pending(self, error: BridgeClosed) -> None:
        if self._closed is None:
            self._closed = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed)
                # Retrieved by request(); mark it so an abandoned future does not warn.
                future.exception()
        self._pending.clear()


class BridgeStdoutProtocol(asyncio.Protocol):
    """Feeds a bridge's stdout pipe straight into its ``BridgeConnection`` (for
    ``loop.connect_read_pipe``): each read is handled inside the transport's callback. ``closed``
    resolves once the pipe is at its end (and the connection has failed what was pending)."""

    def __init__(self, conn: BridgeConnection) -> None:
        self._conn = conn
        self.transport: asyncio.BaseTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._conn.feed_data(data)
        except Exception:  # never let one bad chunk tear the pipe down
            logger.exception("%sfailed to handle bridge output", self._conn._log_context)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.feed_eof("bridge stdout closed" if exc is None else f"bridge stdout failed: {exc!r}")
        if not self.closed.done():
            self.closed.set_result(None)
