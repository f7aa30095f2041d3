"""Socket.IO relay: python-socketio ``AsyncServer`` at ``/socket.io/``, one room per tenant.

Connect with ``auth: {token, since?, tenant_id?, tenants?}``:
- a tenant API key joins that tenant's room only (``since``: an integer);
- the admin token joins ``tenant_id`` / ``tenants`` (``since``: an integer for all of them, or a
  ``{tenant_id: seq}`` map), or every tenant when neither is given (``since`` is refused there);
- missing or wrong credentials, revoked keys and deactivated tenants are refused with
  ``{message, data: {code}}``.

Delivery is per connection, with a cursor per tenant (the last seq it was sent):
- a connection starts in catch-up: it joins its rooms, buffers live events, replays the log from
  its cursor page by page, then flushes the buffer, dropping what the replay already sent;
- a live event with seq <= cursor is a duplicate and dropped; seq > cursor + 1 means one is missing
  (emitted out of order by another node, or lost): the connection goes back to catch-up from the
  log, which always has it (seq K+1 commits after seq K). So: in order, no gap, no duplicate.
- a client whose send queue passes ``max_queue`` packets is disconnected (reason "slow consumer");
  it reconnects with ``since`` and loses nothing.

Several nodes: :class:`RelayRedisManager` (an ``AsyncRedisManager``) carries each committed batch
between nodes in ONE publish, as pre-encoded packets; a node skips its own messages unparsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from socketio.exceptions import ConnectionRefusedError as Refused

from control_plane import admin_cookie as admin_session
from control_plane.config import Settings
from control_plane.crypto import hash_api_key, tokens_equal
from control_plane.db import events as events_db
from control_plane.db import tenants as tenants_db
from control_plane.db.engine import Database
from control_plane.events import ALL_ROOM, format_ts, tenant_room
from control_plane.realtime import transport
from control_plane.realtime.publisher import Envelope

log = logging.getLogger(__name__)

NAMESPACE = "/"
BATCH_EVENT = "gateway.relay.batch"  # internal pub/sub message carrying many events; never sent to clients
REDIS_CHANNEL = "gateway.realtime"
MAX_QUEUE = 2000  # packets waiting in one client's send queue before it is cut off as slow
MAX_BUFFER = 20_000  # live events buffered for one connection during its catch-up
REPLAY_PAGE = 500
CREDENTIALS_RECHECK_S = 30.0  # open connections' API keys re-checked (other nodes' revocations)
CONNECT_WAIT_S = 10.0

# One event to deliver: (tenant_id, seq, encoded Socket.IO packet text).
Item = tuple[str, int, str]


def encode_packet(tenant_id: str, seq: int, type_: str, ts: str, data_json: str) -> str:
    """The Socket.IO EVENT packet text for one envelope, built without re-encoding ``data``.
    (``2`` = EVENT on the default namespace; names are validated by the publisher.)"""
    return (
        f'2["{type_}",{{"seq":{seq},"tenant_id":"{tenant_id}","type":"{type_}","ts":"{ts}",'
        f'"data":{data_json}}}]'
    )


def envelope_item(env: Envelope) -> Item:
    return (
        env["tenant_id"],
        env["seq"],
        encode_packet(env["tenant_id"], env["seq"], env["type"], env["ts"], env.data_json),
    )


def row_item(row: dict[str, Any]) -> Item:
    return (
        row["tenant_id"],
        row["seq"],
        encode_packet(row["tenant_id"], row["seq"], row["type"], format_ts(row["ts"]), row["data"]),
    )


@dataclass(eq=False)
class Subscriber:
    """One connection's delivery state."""

    sid: str
    tenants: frozenset[str] | None  # None: every tenant (admin)
    cursors: dict[str, int]
    catching_up: bool = True
    dirty: set[str] = field(default_factory=set)  # tenants to replay from the log
    buffer: list[Item] = field(default_factory=list)
    socket: Any = None  # engineio socket, known once connected
    task: asyncio.Task | None = None
    closed: bool = False
    key_hash: str | None = None  # the tenant API key it connected with (re-checked while open)


class RelayRedisManager(socketio.AsyncRedisManager):
    """AsyncRedisManager that carries a whole batch of events in one publish and skips, without
    parsing it, every batch this node published itself."""

    name = "gateway-redis"

    def __init__(self, url: str, *, channel: str = REDIS_CHANNEL) -> None:
        super().__init__(url, channel=channel)
        self.relay: Relay | None = None
        self._own_prefix = json.dumps({"host_id": self.host_id})[:-1].encode()  # b'{"host_id": "..."'
        self._subscribed = asyncio.Event()

    async def publish_batch(self, items: Sequence[Item]) -> None:
        await self._publish(
            {
                "host_id": self.host_id,
                "method": "emit",
                "event": BATCH_EVENT,
                "data": items,
                "namespace": NAMESPACE,
                "room": None,
            }
        )

    async def _handle_emit(self, message: dict) -> None:
        if message.get("event") == BATCH_EVENT:
            if self.relay is not None:
                self.relay.deliver([tuple(i) for i in message["data"]])  # type: ignore[misc]
            return
        await super()._handle_emit(message)

    async def wait_subscribed(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    async def _listen(self) -> AsyncIterator[Any]:  # replaces the library's, to know when we subscribed
        channel = self.channel.encode()
        retry_s = 0.5
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                self._subscribed.set()
                retry_s = 0.5
                async for message in self.pubsub.listen():
                    if message["channel"] != channel or message["type"] != "message":
                        continue
                    data = message["data"]
                    if isinstance(data, bytes) and data.startswith(self._own_prefix):
                        continue  # our own batch: delivered locally before publishing
                    yield data
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("realtime redis listener: %s; retrying in %.1fs", exc, retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 30.0)

    async def aclose(self) -> None:
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        if self.pubsub is not None:
            await self.pubsub.aclose()
        if self.redis is not None:
            await self.redis.aclose()


class Relay:
    """Owns the Socket.IO server's delivery: auth at connect, replay, live fan-out, slow clients."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        db: Database,
        settings: Settings,
        *,
        max_queue: int = MAX_QUEUE,
        max_buffer: int = MAX_BUFFER,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        self.sio = sio
        self.db = db
        self.settings = settings
        self.max_queue = max_queue
        self.max_buffer = max_buffer
        self.replay_page = replay_page
        self.subs: dict[str, Subscriber] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"slow_disconnects": 0, "catch_ups": 0}
        self._recheck = asyncio.Event()
        manager = sio.manager
        self.pubsub: RelayRedisManager | None = manager if isinstance(manager, RelayRedisManager) else None
        if self.pubsub is not None:
            self.pubsub.relay = self
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)

    # -- publishing side ------------------------------------------------------------------------

    async def broadcast(self, envelopes: Sequence[Envelope]) -> None:
        """Deliver committed envelopes to this node's subscribers, then to the other nodes."""
        items = self.deliver_now(envelopes)
        if items:
            await self.forward(items)

    def deliver_now(self, envelopes: Sequence[Envelope]) -> list[Item] | None:
        """This node's share of :meth:`broadcast`, synchronous; returns what :meth:`forward` must
        carry to the other nodes (None: there are none)."""
        if self.pubsub is None and not self.sio.manager.rooms.get(NAMESPACE):
            return None  # no connection here and no other node: nothing to encode (clients replay the log)
        items = [envelope_item(e) for e in envelopes]
        self.deliver(items)
        return items if self.pubsub is not None else None

    async def forward(self, items: Sequence[Item]) -> None:
        """Carry delivered events to the other nodes (Redis); a no-op on a single node."""
        if self.pubsub is not None and items:
            await self.pubsub.publish_batch(items)

    def deliver(self, items: Iterable[Item]) -> None:
        """Fan events out to local connections (synchronous: no interleaving within a batch)."""
        rooms = self.sio.manager.rooms.get(NAMESPACE)
        if not rooms:
            return
        everyone = rooms.get(ALL_ROOM)
        subs = self.subs
        for item in items:
            members = rooms.get(tenant_room(item[0]))
            if members:
                for sid in members:
                    sub = subs.get(sid)
                    if sub is not None:
                        self._offer(sub, item)
            if everyone:
                for sid in everyone:
                    sub = subs.get(sid)
                    if sub is not None:
                        self._offer(sub, item)

    def _offer(self, sub: Subscriber, item: Item, *, accept_gap: bool = False) -> None:
        if sub.closed:
            return
        if sub.catching_up:
            self._buffer(sub, item)
            return
        tenant_id, seq, text = item
        cursor = sub.cursors.get(tenant_id)
        if cursor is not None:
            if seq <= cursor:
                return  # already sent (replay, or another node's copy)
            if seq != cursor + 1 and not accept_gap:
                # One is missing: fetch it from the log, keep this one for after.
                sub.dirty.add(tenant_id)
                self._buffer(sub, item)
                self._start_catch_up(sub)
                return
        if self._send(sub, text):
            sub.cursors[tenant_id] = seq

    def _buffer(self, sub: Subscriber, item: Item) -> None:
        sub.catching_up = True
        if len(sub.buffer) < self.max_buffer:
            sub.buffer.append(item)
            return
        # Too much piled up: forget the buffer; everything in it is in the log.
        for tenant_id, seq, _ in sub.buffer + [item]:
            sub.cursors.setdefault(tenant_id, seq - 1)
            sub.dirty.add(tenant_id)
        sub.buffer = []

    def _send(self, sub: Subscriber, text: str) -> bool:
        sock = sub.socket
        if sock is None or sock.closed or sock.closing:
            return False
        if sock.queue.qsize() >= self.max_queue:
            self._cut_off_slow(sub)
            return False
        sock.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, text))
        return True

    def _cut_off_slow(self, sub: Subscriber) -> None:
        sub.closed = True
        self.stats["slow_disconnects"] += 1
        log.warning(
            "realtime client %s cut off: send queue over %d packets (it resumes with since)",
            sub.sid,
            self.max_queue,
        )
        self._spawn(self.sio.disconnect(sub.sid))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- catch-up -------------------------------------------------------------------------------

    def _start_catch_up(self, sub: Subscriber) -> None:
        if sub.task is None and not sub.closed:
            sub.task = self._spawn(self._catch_up(sub))

    async def _catch_up(self, sub: Subscriber) -> None:
        self.stats["catch_ups"] += 1
        stalls = 0  # rounds whose replay found nothing yet a gap remained
        try:
            if sub.socket is None and not await self._wait_connected(sub):
                if not sub.closed and sub.sid in self.subs:
                    # Left as it is, it would stay in catch-up and be sent nothing while it looks
                    # connected: cut it off instead; it reconnects with since and loses nothing.
                    log.warning(
                        "realtime client %s: connection not seen as established within %.0fs; "
                        "disconnecting it",
                        sub.sid,
                        CONNECT_WAIT_S,
                    )
                    sub.closed = True
                    self._spawn(self.sio.disconnect(sub.sid))
                return
            while not sub.closed:
                progress = False
                while sub.dirty and not sub.closed:
                    progress |= await self._replay(sub, sub.dirty.pop())
                if sub.dirty:
                    continue
                # A seq the log does not have either (an emit() whose transaction never committed):
                # after two empty rounds, stop waiting for it.
                accept_gaps = stalls >= 2
                buffered, sub.buffer = sub.buffer, []
                sub.catching_up = False  # from here to the end of the flush nothing awaits
                for item in buffered:
                    self._offer(sub, item, accept_gap=accept_gaps)
                if not sub.catching_up:
                    return
                stalls = 0 if progress else stalls + 1
                if stalls:
                    log.warning("realtime %s: seq gap not in the log (round %d)", sub.sid, stalls)
                    await asyncio.sleep(0.05 * stalls)
        except asyncio.CancelledError:
            raise
        except Exception:  # the client reconnects with since and loses nothing
            log.exception("realtime replay failed for %s; disconnecting it", sub.sid)
            sub.closed = True
            self._spawn(self.sio.disconnect(sub.sid))
        finally:
            sub.task = None

    async def _wait_connected(self, sub: Subscriber) -> bool:
        """The CONNECT packet goes out after the connect handler returns; nothing may precede it."""
        deadline = time.monotonic() + CONNECT_WAIT_S
        manager = self.sio.manager
        while not manager.is_connected(sub.sid, NAMESPACE):
            if sub.closed or time.monotonic() > deadline or sub.sid not in self.subs:
                return False
            await asyncio.sleep(0.002)
        eio_sid = manager.eio_sid_from_sid(sub.sid, NAMESPACE)
        sub.socket = self.sio.eio.sockets.get(eio_sid)
        return sub.socket is not None

    async def _replay(self, sub: Subscriber, tenant_id: str) -> bool:
        """Send the tenant's events after the cursor from the log; True when there were any."""
        sent = False
        while not sub.closed:
            async with self.db.connect() as conn:
                rows = await events_db.events_after(
                    conn, tenant_id, sub.cursors.get(tenant_id, 0), limit=self.replay_page
                )
            for row in rows:
                if not self._send(sub, row_item(row)[2]):
                    return sent
                sub.cursors[tenant_id] = row["seq"]
                sent = True
            if len(rows) < self.replay_page:
                return sent
            await self._drain(sub)
        return sent

    async def _drain(self, sub: Subscriber) -> None:
        """Let the client read what the last replay page queued before the next one."""
        deadline = time.monotonic() + 30.0
        while sub.socket is not None and sub.socket.queue.qsize() > self.max_queue // 4 and not sub.closed:
            if time.monotonic() > deadline:
                self._cut_off_slow(sub)
                return
            await asyncio.sleep(0.01)

    # -- connect / disconnect -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict, auth: Any) -> None:
        try:
            tenants, cursors, key_hash = await self._authorize(environ, auth)
        except Refused:
            raise
        except Exception as exc:
            log.warning("realtime connect refused, dependency failed: %s", exc)
            raise _refuse("temporarily unavailable; retry shortly", "unavailable") from None
        sub = Subscriber(sid=sid, tenants=tenants, cursors=cursors, dirty=set(cursors), key_hash=key_hash)
        self.subs[sid] = sub
        for room in [tenant_room(t) for t in tenants] if tenants is not None else [ALL_ROOM]:
            await self.sio.enter_room(sid, room, namespace=NAMESPACE)
        self._start_catch_up(sub)
        log.info(
            "realtime connect sid=%s tenants=%s",
            sid,
            ",".join(sorted(tenants)) if tenants is not None else "all",
        )

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        sub = self.subs.pop(sid, None)
        if sub is None:
            return
        sub.closed = True
        if sub.task is not None:
            sub.task.cancel()

    async def _authorize(
        self, environ: dict, auth: Any
    ) -> tuple[frozenset[str] | None, dict[str, int], str | None]:
        """(tenants or None for all, initial cursors, the API key's digest or None for the admin)
        or raise a refusal."""
        if auth is None:
            auth = {}
        if not isinstance(auth, dict):
            raise _refuse("auth must be an object: {token, since?}", "invalid_auth")
        token = auth.get("token") or _bearer(environ)
        if not token and _admin_panel_session(environ):
            return *await self._authorize_admin(auth, auth.get("since")), None
        if not isinstance(token, str) or not token:
            raise _refuse(
                "missing credentials: connect with auth: {token: '<api key>'}", "missing_credentials"
            )
        since = auth.get("since")
        if tokens_equal(token, self.settings.admin_token.get()):
            return *await self._authorize_admin(auth, since), None
        async with self.db.connect() as conn:
            tenant = await tenants_db.find_tenant_by_api_key(conn, token)
            if tenant is None:
                raise _refuse("invalid or revoked API key", "invalid_credentials")
            if not tenant["is_active"]:
                raise _refuse("this tenant is deactivated", "tenant_inactive")
            if auth.get("tenant_id") not in (None, tenant["id"]) or auth.get("tenants") is not None:
                raise _refuse("a tenant API key subscribes to its own tenant only", "forbidden")
            cursors = await self._cursors(conn, [tenant["id"]], since)
        return frozenset([tenant["id"]]), cursors, hash_api_key(token)

    # -- credentials of open connections ----------------------------------------------------------

    async def recheck_credentials(self) -> int:
        """Disconnects every open connection whose API key has been revoked (rotation included),
        or whose tenant was deactivated or deleted, since it connected; returns how many. Reconnecting
        with that key is then refused. Admin connections are not affected."""
        held = {sub.key_hash for sub in self.subs.values() if sub.key_hash is not None and not sub.closed}
        if not held:
            return 0
        async with self.db.connect() as conn:
            live = await tenants_db.live_key_hashes(conn, held)
        gone = [
            sub
            for sub in list(self.subs.values())
            if sub.key_hash is not None and sub.key_hash not in live and not sub.closed
        ]
        for sub in gone:
            sub.closed = True
            log.info(
                "realtime client %s disconnected: its API key was revoked or its tenant "
                "deactivated or deleted",
                sub.sid,
            )
            await self.sio.disconnect(sub.sid)
        return len(gone)

    def recheck_soon(self) -> None:
        """Called after a key is revoked or a tenant deactivated or deleted on this node."""
        self._recheck.set()

    async def recheck_forever(self, interval_s: float) -> None:
        """Every ``interval_s`` (other nodes' changes), or at once after a change on this node."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), interval_s)
            self._recheck.clear()
            try:
                await self.recheck_credentials()
            except Exception as exc:
                log.warning(
                    "realtime: cannot re-check credentials of open connections: %s", type(exc).__name__
                )

    async def _authorize_admin(self, auth: dict, since: Any) -> tuple[frozenset[str] | None, dict[str, int]]:
        wanted = auth.get("tenants")
        if auth.get("tenant_id") is not None:
            wanted = [auth["tenant_id"]]
        if wanted is None:
            if since is not None:
                raise _refuse("'since' needs tenant_id or tenants (replay is per tenant)", "invalid_since")
            return None, {}
        if not isinstance(wanted, list) or not wanted or not all(isinstance(t, str) for t in wanted):
            raise _refuse("tenants must be a non-empty list of tenant ids", "invalid_tenants")
        async with self.db.connect() as conn:
            for tenant_id in wanted:
                tenant = await tenants_db.get_tenant(conn, tenant_id) if len(tenant_id) <= 32 else None
                if tenant is None:
                    raise _refuse(f"tenant {tenant_id!r} not found", "tenant_not_found")
            cursors = await self._cursors(conn, wanted, since)
        return frozenset(wanted), cursors

    @staticmethod
    async def _cursors(conn, tenant_ids: list[str], since: Any) -> dict[str, int]:
        """Where each tenant's delivery starts: ``since``, or (live only) the tenant's latest seq,
        read before joining the room, so events committed while connecting are not lost."""
        cursors: dict[str, int] = {}
        for tenant_id in tenant_ids:
            value = since.get(tenant_id) if isinstance(since, dict) else since
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise _refuse(
                    "since must be a non-negative integer (the last seq you received)", "invalid_since"
                )
            latest = await events_db.last_seq(conn, tenant_id)
            # A since beyond the latest seq (a client that outlived a database restore) restarts
            # from the latest: better a repeat than a silent loss.
            cursors[tenant_id] = latest if value is None else min(value, latest)
        return cursors

    # -- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        for sid in list(self.subs):
            try:
                await self.sio.disconnect(sid)
            except Exception:  # best effort on the way out
                log.debug("disconnect %s failed on shutdown", sid, exc_info=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _refuse(message: str, code: str) -> Refused:
    return Refused(message, {"code": code})


def _bearer(environ: dict) -> str | None:
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _admin_panel_session(environ: dict) -> bool:
    """The admin panel's signed session cookie (HttpOnly, SameSite=Strict; see
    control_plane/admin_cookie.py) stands in for the admin token on a same-origin connection that
    sends no token."""
    request = environ.get("aiohttp.request")
    signer = request.app.get("admin_sessions") if request is not None else None
    if signer is None:
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin and urlsplit(origin).netloc != environ.get("HTTP_HOST"):
        return False
    return signer.verify(request.cookies.get(admin_session.COOKIE_NAME)) is not None


def create_server(settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server; with REDIS_URL, a Redis manager links it to the other nodes."""
    manager = RelayRedisManager(settings.redis_url) if settings.redis_url else socketio.AsyncManager()
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, logger=False, engineio_logger=False
    )
    transport.install(sio.eio)
    return sio


def attach(app: web.Application, sio: socketio.AsyncServer) -> None:
    sio.attach(app)  # default path: /socket.io/
