"""What leaves the supervisor, in order: session state (persisted, then published as session.state
and session.qr through one boundary, ``events.publish``) and the bridges' messages (handed to the
message listeners, e.g. messaging's inbound pipeline).

Both are queues drained by one task each, so a bridge's callbacks never wait on the database or on
a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from control_plane.db import sessions as sessions_db
from control_plane.events import SESSION_STATE

log = logging.getLogger(__name__)

MESSAGE_BACKLOG = 10_000  # bridge messages kept while no listener is registered yet

MessageListener = Callable[[str, str, dict[str, Any]], Awaitable[None]]
WriteTransaction = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class EventPublisher(Protocol):
    async def publish(self, tenant_id: str, type: str, data: dict[str, Any]) -> Any: ...


class LogPublisher:
    """Stand-in when no realtime publisher is configured: session events go to the log only."""

    async def publish(self, tenant_id: str, type: str, data: dict[str, Any]) -> None:
        log.debug("event %s tenant=%s %s", type, tenant_id, {k: v for k, v in data.items() if k != "qr"})


# (tenant_id, snapshot or None, session.state data | (type, data) | None)
StateItem = tuple[str, dict[str, Any] | None, Any]


class StateWriter:
    """Persists state snapshots (latest per tenant, one transaction per batch), then publishes the
    batch's events in order. Nothing is written or published for a forgotten tenant."""

    def __init__(self, write: WriteTransaction, events: EventPublisher, forgotten: set[str]) -> None:
        self._write = write
        self._events = events
        self._forgotten = forgotten
        self._queue: asyncio.Queue[StateItem] = asyncio.Queue()

    def record(self, tenant_id: str, snapshot: dict[str, Any], event: dict[str, Any] | None) -> None:
        """Queues the session's actual state for the database and, with ``event``, a session.state."""
        self._queue.put_nowait((tenant_id, snapshot, event))

    def publish(self, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
        self._queue.put_nowait((tenant_id, None, (type_, data)))

    async def flush(self, timeout_s: float) -> None:
        """Waits (up to ``timeout_s``) until everything queued is written and published."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor writer failed on a batch of %d", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[StateItem]) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for tenant_id, snapshot, _ in batch:
            if snapshot is not None and tenant_id not in self._forgotten:
                latest[tenant_id] = snapshot
        if latest:
            await self._persist(latest)
        for tenant_id, snapshot, event in batch:
            if event is None or tenant_id in self._forgotten:
                continue
            type_, data = (SESSION_STATE, event) if snapshot is not None else event
            try:
                await self._events.publish(tenant_id, type_, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot publish %s tenant=%s: %s", type_, tenant_id, exc)

    async def _persist(self, latest: dict[str, dict[str, Any]]) -> None:
        """One transaction for all; if it fails, one per tenant so one bad row spoils no other."""
        try:
            async with self._write() as conn:
                for tenant_id, snap in latest.items():
                    await sessions_db.record_actual_state(conn, tenant_id, **snap)
        except Exception:
            for tenant_id, snap in latest.items():
                try:
                    async with self._write() as conn:
                        await sessions_db.record_actual_state(conn, tenant_id, **snap)
                except Exception as exc:
                    log.warning("cannot persist session state tenant=%s: %s", tenant_id, type(exc).__name__)


class MessageDispatcher:
    """Bridge events about messages and chats (``protocol.FORWARDED_EVENTS``: messages, acks, changes,
    notices) to every listener, in order. Events that arrive before the first listener is added are
    kept (up to MESSAGE_BACKLOG)."""

    def __init__(self) -> None:
        self._listeners: list[MessageListener] = []
        self._queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self._has_listener = asyncio.Event()

    def add_listener(self, listener: MessageListener) -> None:
        self._listeners.append(listener)
        self._has_listener.set()

    def dispatch(self, tenant_id: str, name: str, data: dict[str, Any]) -> None:
        if not self._listeners and self._queue.qsize() >= MESSAGE_BACKLOG:
            log.error("no message listener: dropping %s (backlog full) tenant=%s", name, tenant_id)
            return
        self._queue.put_nowait((tenant_id, name, data))

    async def run(self) -> None:
        await self._has_listener.wait()  # bridges may speak before messaging has subscribed
        while True:
            tenant_id, name, data = await self._queue.get()
            for listener in list(self._listeners):
                try:
                    await listener(tenant_id, name, data)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("message listener failed on %s tenant=%s", name, tenant_id)
