"""Store, then publish: one transaction whose events are emitted only after it commits.

    async with store_then_publish(db.begin(), app["events"]) as unit:
        rows = await some_db.record_things(unit.conn, ...)
        unit.add(tenant_id, events.MESSAGE_RECEIVED, data)
    # committed here; then the events were emitted (in the order added)

The events added are appended to the event log at the end of the transaction (its last statements,
so the tenants' counter rows stay locked as briefly as possible), inside it: a rollback takes their
seqs back and nothing is emitted. A writer that appends them itself, with its own statements in one
round trip, takes ``unit.prepare()`` and hands back the seqs with ``unit.appended(seqs)``.

``events`` is the publisher (``app["events"]``), or None in processes without one (nothing is
appended or emitted). An emit that fails after the commit is logged: clients catch up from the log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from control_plane.realtime.envelopes import Envelope, NewEvent, PreparedEvents

log = logging.getLogger(__name__)

C = TypeVar("C")


class EventLog(Protocol):
    """What the unit needs of the publisher (``EventPublisher``; tests may pass a fake)."""

    async def append_many(self, conn: Any, events: Sequence[NewEvent]) -> list[Envelope]: ...

    def prepare(self, events: Sequence[NewEvent]) -> PreparedEvents: ...

    async def emit(self, envelopes: Sequence[Envelope]) -> None: ...


class Unit(Generic[C]):
    """The events of one transaction (see the module docstring); ``conn`` is the transaction's."""

    __slots__ = ("_events", "_items", "_prepared", "conn", "envelopes")

    def __init__(self, events: EventLog | None, conn: C) -> None:
        self._events = events
        self.conn = conn
        self._items: list[NewEvent] = []
        self._prepared: PreparedEvents | None = None
        self.envelopes: list[Envelope] = []

    def add(self, tenant_id: str, type_: str, data: dict[str, Any], data_json: str | None = None) -> None:
        """An event to append with the transaction (``data_json``: ``data`` already encoded)."""
        if data_json is None:
            self._items.append((tenant_id, type_, data))
        else:
            self._items.append((tenant_id, type_, data, data_json))

    def extend(self, events: Sequence[NewEvent]) -> None:
        self._items.extend(events)

    def __len__(self) -> int:
        return len(self._items)

    async def append(self) -> None:
        """Append the events added so far to the event log, in the transaction."""
        items, self._items = self._items, []
        if items and self._events is not None:
            self.envelopes += await self._events.append_many(self.conn, items)

    def prepare(self) -> PreparedEvents | None:
        """The events added so far, for a caller that appends them itself (None: nothing to append);
        then ``appended(seqs)``."""
        items, self._items = self._items, []
        if not items or self._events is None:
            return None
        self._prepared = self._events.prepare(items)
        return self._prepared

    def appended(self, seqs: Sequence[int]) -> None:
        """The seqs the event log gave the prepared events."""
        assert self._prepared is not None
        self.envelopes += self._prepared.envelopes(seqs)
        self._prepared = None

    async def emit(self) -> None:
        """After the commit: push the envelopes to subscribers."""
        envelopes, self.envelopes = self.envelopes, []
        if envelopes and self._events is not None:
            try:
                await self._events.emit(envelopes)
            except Exception:
                log.exception("%d events stored but not emitted (clients catch up by seq)", len(envelopes))


@contextlib.asynccontextmanager
async def store_then_publish(
    transaction: contextlib.AbstractAsyncContextManager[C], events: EventLog | None
) -> AsyncIterator[Unit[C]]:
    """``transaction`` (e.g. ``db.begin()``, ``conn.begin()``): entered, the body runs with the unit,
    the unit's events are appended, the transaction commits, then the events are emitted."""
    async with transaction as conn:
        unit = Unit(events, conn)
        yield unit
        await unit.append()
    await unit.emit()
