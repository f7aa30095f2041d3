"""Realtime relay: the event log's publishing boundary and the Socket.IO server (issue 4).

``attach(app)`` (at app creation) mounts Socket.IO at ``/socket.io/`` as ``app["sio"]``;
``running(app)`` (the app's realtime cleanup context) starts the publisher ``app["events"]``, the
relay and the retention pruner, and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from control_plane.config import Settings
from control_plane.realtime.publisher import Envelope, EventPublisher
from control_plane.realtime.retention import prune_forever
from control_plane.realtime.server import CREDENTIALS_RECHECK_S, Relay, RelayRedisManager, create_server

log = logging.getLogger(__name__)

REDIS_SUBSCRIBE_WAIT_S = 5.0

__all__ = ["Envelope", "EventPublisher", "attach", "running"]


def attach(app: web.Application) -> None:
    """Mount the Socket.IO server (routes must exist before the app starts)."""
    sio = create_server(app["settings"])
    sio.attach(app)
    app["sio"] = sio


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[EventPublisher]:
    settings: Settings = app["settings"]
    sio = app["sio"]
    relay = Relay(sio, app["db"], settings)
    manager = sio.manager
    if isinstance(manager, RelayRedisManager):
        sio.manager_initialized = True
        manager.initialize()  # starts the pub/sub listener now, not at the first connection
        try:
            await manager.wait_subscribed(REDIS_SUBSCRIBE_WAIT_S)
        except TimeoutError:
            log.warning("realtime: Redis not subscribed yet; other nodes' events arrive once it is")
    publisher = EventPublisher(app["db"], relay)
    publisher.start()
    app["events"] = publisher
    app["realtime_relay"] = relay
    pruner = asyncio.create_task(
        prune_forever(app["db"], settings.event_retention_days), name="event-log-pruner"
    )
    rechecker = asyncio.create_task(relay.recheck_forever(CREDENTIALS_RECHECK_S), name="realtime-credentials")
    try:
        yield publisher
    finally:
        pruner.cancel()
        rechecker.cancel()
        await asyncio.gather(pruner, rechecker, return_exceptions=True)
        await publisher.close()
        await relay.close()
        await sio.shutdown()
        await _cancel_ping_tasks(sio)
        if isinstance(manager, RelayRedisManager):
            await manager.aclose()


async def _cancel_ping_tasks(sio) -> None:
    """engine.io starts a fire-and-forget ping task per connection (sleeping ping_interval) that
    its shutdown() does not stop; cancel this server's, so none outlives the app."""
    mine = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if getattr(coro, "__qualname__", "") != "AsyncSocket._send_ping" or frame is None:
            continue
        owner = frame.f_locals.get("self")
        if getattr(owner, "server", None) is sio.eio:
            task.cancel()
            mine.append(task)
    await asyncio.gather(*mine, return_exceptions=True)
