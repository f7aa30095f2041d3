"""Realtime relay: the event log's publishing boundary and the Socket.IO server.

``attach(app)`` (at app creation) mounts Socket.IO at ``/socket.io/`` as ``app["sio"]``;
``running(app)`` (the app's realtime cleanup context) starts the publisher ``app["events"]``, the
relay and the retention pruner, and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from control_plane.config import Settings
from control_plane.realtime import _compat
from control_plane.realtime.publisher import Envelope, EventPublisher
from control_plane.realtime.pubsub import RedisLink
from control_plane.realtime.retention import prune_forever
from control_plane.realtime.server import CREDENTIALS_RECHECK_S, Relay, create_server

log = logging.getLogger(__name__)

REDIS_SUBSCRIBE_WAIT_S = 5.0

__all__ = ["Envelope", "EventPublisher", "attach", "release_clients", "running"]
RELEASE_TIMEOUT_S = 2.0


def attach(app: web.Application) -> None:
    """Mount the Socket.IO server (routes must exist before the app starts)."""
    sio = create_server(app["settings"])
    sio.attach(app)
    app["sio"] = sio


async def release_clients(app: web.Application) -> None:
    """The app's ``on_shutdown`` hook: once the server stops accepting, every Socket.IO client is let
    go (``Relay.release``: they reconnect elsewhere and replay with ``since``), so no open socket
    holds the shutdown back; in-flight requests then finish and the bridges stop."""
    relay = app.get("realtime_relay")
    if relay is None:
        return
    started = time.monotonic()
    count = await relay.release(RELEASE_TIMEOUT_S)
    log.info(
        "shutdown: released %d Socket.IO connection(s) in %.2fs (they reconnect and replay with since)",
        count,
        time.monotonic() - started,
    )


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[EventPublisher]:
    settings: Settings = app["settings"]
    sio = app["sio"]
    link = RedisLink(settings.redis_url) if settings.redis_url else None
    relay = Relay(sio, app["db"], settings, link=link, throttle=app.get("auth_throttle"))
    if link is not None:
        link.start(relay.deliver)  # listening now, not at the first connection
        try:
            await link.wait_subscribed(REDIS_SUBSCRIBE_WAIT_S)
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
        await _compat.cancel_ping_tasks(sio.eio)
        if link is not None:
            await link.aclose()
