"""The link between nodes: each committed batch goes to the other nodes in ONE Redis publish, as
pre-encoded packets; a node skips its own messages unparsed.

redis-py's public pub/sub API (this replaced a python-socketio ``AsyncRedisManager`` subclass that
overrode its private ``_listen``, ``_handle_emit`` and ``_publish``). The message is the one that
manager published, byte for byte, so nodes on either version understand each other during a
rolling upgrade: ``{"host_id": ..., "method": "emit", "event": BATCH_EVENT, "data": [[tenant_id,
seq, packet], ...], "namespace": "/", "room": null}`` on channel ``gateway.realtime``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from control_plane.realtime.packets import Item

log = logging.getLogger(__name__)

REDIS_CHANNEL = "gateway.realtime"
BATCH_EVENT = "gateway.relay.batch"  # the message carrying many events; never sent to clients
NAMESPACE = "/"

OnBatch = Callable[[list[Item]], None]


class RedisLink:
    def __init__(self, url: str, *, channel: str = REDIS_CHANNEL) -> None:
        self.channel = channel
        self.host_id = uuid.uuid4().hex
        self.redis = aioredis.Redis.from_url(url)
        self._own_prefix = json.dumps({"host_id": self.host_id})[:-1].encode()  # b'{"host_id": "..."'
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task | None = None

    def start(self, on_batch: OnBatch) -> None:
        """Listen for the other nodes' batches; ``on_batch`` runs synchronously for each."""
        self._listener = asyncio.create_task(self._listen(on_batch), name="realtime-redis-listener")

    async def wait_subscribed(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    async def publish_batch(self, items: Sequence[Item]) -> None:
        """One publish; a failure is logged (the other nodes' clients then find the gap at the next
        event and replay it from the log), never raised."""
        message = json.dumps(
            {
                "host_id": self.host_id,
                "method": "emit",
                "event": BATCH_EVENT,
                "data": items,
                "namespace": NAMESPACE,
                "room": None,
            }
        )
        for attempt in (1, 2):
            try:
                await self.redis.publish(self.channel, message)
                return
            except Exception as exc:
                log.warning("realtime redis publish failed (attempt %d/2): %s", attempt, exc)

    async def _listen(self, on_batch: OnBatch) -> None:
        retry_s = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                retry_s = 0.5
                async for message in pubsub.listen():
                    self._handle(message, on_batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("realtime redis listener: %s; retrying in %.1fs", exc, retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 30.0)
            finally:
                await pubsub.aclose()

    def _handle(self, message: dict[str, Any], on_batch: OnBatch) -> None:
        if message.get("type") != "message":
            return
        data = message["data"]
        if isinstance(data, bytes) and data.startswith(self._own_prefix):
            return  # our own batch: delivered locally before publishing
        try:
            decoded = json.loads(data)
            if decoded.get("method") == "emit" and decoded.get("event") == BATCH_EVENT:
                on_batch([(tenant_id, seq, text) for tenant_id, seq, text in decoded["data"]])
        except Exception:
            log.exception("realtime: cannot handle a message from another node")

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.redis.aclose()
