"""Socket.IO relay: python-socketio ``AsyncServer`` at ``/socket.io/``, one room per tenant.

Who may connect, and from where delivery starts: ``auth.py``. Delivery is per connection, with a
cursor per tenant (the last seq it was sent):
- a connection starts in catch-up: it joins its rooms, buffers live events, replays the log from
  its cursor page by page, then flushes the buffer, dropping what the replay already sent;
- a live event with seq <= cursor is a duplicate and dropped; seq > cursor + 1 means one is missing
  (emitted out of order by another node, or lost): the connection goes back to catch-up from the
  log, which always has it (seq K+1 commits after seq K). So: in order, no gap, no duplicate.
- a client whose send queue passes ``max_queue`` packets is disconnected (reason "slow consumer");
  it reconnects with ``since`` and loses nothing.

Several nodes: :class:`~control_plane.realtime.pubsub.RedisLink` carries each committed batch
between nodes in ONE publish; the relay delivers what it receives like its own batches.
Library internals (engine.io queues, the websocket driver, ping tasks) go through ``_compat.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web

from control_plane.auth_throttle import AuthThrottle
from control_plane.config import Settings
from control_plane.db import events as events_db
from control_plane.db import tenants as tenants_db
from control_plane.db.engine import Database
from control_plane.events import ALL_ROOM, tenant_room
from control_plane.realtime import _compat, transport
from control_plane.realtime.auth import Refused, authorize, refuse
from control_plane.realtime.packets import Item, encode_packet, envelope_item, row_item
from control_plane.realtime.publisher import Envelope
from control_plane.realtime.pubsub import BATCH_EVENT, REDIS_CHANNEL, RedisLink

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_EVENT",
    "REDIS_CHANNEL",
    "Item",
    "Relay",
    "Subscriber",
    "create_server",
    "encode_packet",
    "envelope_item",
    "row_item",
]

NAMESPACE = "/"
MAX_QUEUE = 2000  # packets waiting in one client's send queue before it is cut off as slow
MAX_BUFFER = 20_000  # live events buffered for one connection during its catch-up
REPLAY_PAGE = 500
CREDENTIALS_RECHECK_S = 30.0  # open connections' API keys re-checked (other nodes' revocations)
CONNECT_WAIT_S = 10.0


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
        link: RedisLink | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.sio = sio
        self.throttle = throttle or AuthThrottle()  # the app passes its shared one
        self.db = db
        self.settings = settings
        self.max_queue = max_queue
        self.max_buffer = max_buffer
        self.replay_page = replay_page
        self.subs: dict[str, Subscriber] = {}
        # Who receives what: sid -> subscriber, per tenant, and for every tenant (admin).
        self._by_tenant: dict[str, dict[str, Subscriber]] = {}
        self._everyone: dict[str, Subscriber] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"slow_disconnects": 0, "catch_ups": 0}
        self._recheck = asyncio.Event()
        self.link = link  # the other nodes (None: a single node)
        self.releasing = False  # shutting down: connections are closed, new ones refused
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
        if self.link is None and not self.subs:
            return None  # no connection here and no other node: nothing to encode (clients replay the log)
        items = [envelope_item(e) for e in envelopes]
        self.deliver(items)
        return items if self.link is not None else None

    async def forward(self, items: Sequence[Item]) -> None:
        """Carry delivered events to the other nodes (Redis); a no-op on a single node."""
        if self.link is not None and items:
            await self.link.publish_batch(items)

    def deliver(self, items: Iterable[Item]) -> None:
        """Fan events out to local connections (synchronous: no interleaving within a batch)."""
        by_tenant, everyone = self._by_tenant, self._everyone
        if not by_tenant and not everyone:
            return
        for item in items:
            members = by_tenant.get(item[0])
            if members:
                for sub in members.values():
                    self._offer(sub, item)
            if everyone:
                for sub in everyone.values():
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
        for tenant_id, seq, _ in [*sub.buffer, item]:
            sub.cursors.setdefault(tenant_id, seq - 1)
            sub.dirty.add(tenant_id)
        sub.buffer = []

    def _send(self, sub: Subscriber, text: str) -> bool:
        sock = sub.socket
        if sock is None:
            return False
        outcome = _compat.enqueue_message(sock, text, self.max_queue)
        if outcome == _compat.SENT:
            return True
        if outcome == _compat.FULL:
            self._cut_off_slow(sub)
        return False

    def _cut_off_slow(self, sub: Subscriber) -> None:
        sub.closed = True
        self.stats["slow_disconnects"] += 1
        log.warning(
            "realtime client %s cut off: send queue over %d packets (it resumes with since)",
            sub.sid,
            self.max_queue,
        )
        self._spawn(self.sio.disconnect(sub.sid))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
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
                    self._forget(sub)
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
        while (sock := _compat.engineio_socket(self.sio, sub.sid, NAMESPACE)) is None:
            if sub.closed or time.monotonic() > deadline or sub.sid not in self.subs:
                return False
            await asyncio.sleep(0.002)
        sub.socket = sock
        return True

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
        while sub.socket is not None and _compat.backlog(sub.socket) > self.max_queue // 4 and not sub.closed:
            if time.monotonic() > deadline:
                self._cut_off_slow(sub)
                return
            await asyncio.sleep(0.01)

    # -- connect / disconnect -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict, auth: Any) -> None:
        if self.releasing:
            raise refuse("the server is shutting down; retry shortly", "unavailable")
        try:
            grant = await authorize(self.db, self.settings, environ, auth, self.throttle)
        except Refused:
            raise
        except Exception as exc:
            log.warning("realtime connect refused, dependency failed: %s", exc)
            raise refuse("temporarily unavailable; retry shortly", "unavailable") from None
        tenants = grant.tenants
        sub = Subscriber(
            sid=sid, tenants=tenants, cursors=grant.cursors, dirty=set(grant.cursors), key_hash=grant.key_hash
        )
        self.subs[sid] = sub
        if tenants is None:
            self._everyone[sid] = sub
        else:
            for tenant_id in tenants:
                self._by_tenant.setdefault(tenant_id, {})[sid] = sub
        # The Socket.IO rooms, for anyone emitting through the server (delivery uses the index above).
        for room in [tenant_room(t) for t in tenants] if tenants is not None else [ALL_ROOM]:
            await self.sio.enter_room(sid, room, namespace=NAMESPACE)
        self._start_catch_up(sub)
        log.info(
            "realtime connect sid=%s tenants=%s",
            sid,
            ",".join(sorted(tenants)) if tenants is not None else "all",
        )

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        sub = self.subs.get(sid)
        if sub is None:
            return
        self._forget(sub)
        sub.closed = True
        if sub.task is not None:
            sub.task.cancel()

    def _forget(self, sub: Subscriber) -> None:
        """Take a connection out of delivery (it is gone, or being cut off)."""
        self.subs.pop(sub.sid, None)
        self._everyone.pop(sub.sid, None)
        for tenant_id in sub.tenants or ():
            members = self._by_tenant.get(tenant_id)
            if members is not None:
                members.pop(sub.sid, None)
                if not members:
                    del self._by_tenant[tenant_id]

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

    # -- lifecycle ------------------------------------------------------------------------------

    async def release(self, timeout_s: float) -> int:
        """Shutting down: closes every connection at the transport (engine.io), not with a Socket.IO
        disconnect, so clients treat it as a lost connection and reconnect by themselves (to another
        node, or to this one restarted), replaying from their last ``seq`` with ``since``; new
        connections are refused meanwhile. Returns how many were closed."""
        self.releasing = True
        eio = self.sio.eio
        count = len(eio.sockets)
        try:
            async with asyncio.timeout(timeout_s):
                await transport.close_all(eio)  # websockets: a close frame, the client reconnects
                polling = [sid for sid, sock in list(eio.sockets.items()) if not sock.upgraded]
                for sid in polling:  # long-polling ones: an engine.io CLOSE ends their poll
                    await eio.disconnect(sid)
        except TimeoutError:
            log.warning("realtime: %d connection(s) not closed within %.1fs", len(eio.sockets), timeout_s)
        return count

    async def close(self) -> None:
        for sid in list(self.subs):
            try:
                await self.sio.disconnect(sid)
            except Exception:  # best effort on the way out
                log.debug("disconnect %s failed on shutdown", sid, exc_info=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def create_server(settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server (the link to other nodes is :class:`RedisLink`, started by
    ``control_plane.realtime.running``)."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=socketio.AsyncManager(), logger=False, engineio_logger=False
    )
    transport.install(sio.eio)
    _compat.track_ping_tasks(sio.eio)
    return sio


def attach(app: web.Application, sio: socketio.AsyncServer) -> None:
    sio.attach(app)  # default path: /socket.io/
