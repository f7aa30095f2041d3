"""The outbox's outcome recorder: what each send came to (sent, failed, retry, defer, unknown), stored
by one group-commit writer (``db.batch.GroupCommit``) and published after the commit.

One transaction for everything that finished since the last commit, every tenant's sends in one
round trip on MariaDB, at most one commit per ``min_interval_s`` while busy (a lone outcome after a
quiet spell goes at once): every commit costs a few round trips whatever its size, and at thousands
of sends a second back-to-back commits of a dozen rows each spent more CPU on those than on the rows.
Then ``message.sent`` / ``message.status`` / ``message.failed`` are emitted. An outcome is kept
until stored (a database outage holds it; the dispatcher stops claiming while too many wait).

Also here: status facts that raced the record of their send (``sweep_orphans``). Crash recovery is
in ``recovery.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from control_plane import events as event_types
from control_plane.db import messages as messages_db
from control_plane.db import outbox as outbox_db
from control_plane.db.batch import GroupCommit
from control_plane.db.engine import utcnow
from control_plane.db.status_facts import apply_recorded_statuses
from control_plane.realtime.unit import EventLog, store_then_publish

log = logging.getLogger(__name__)

RECORD_MIN_INTERVAL_S = 0.03
Event = tuple[str, str, dict[str, Any]]
Outcomes = tuple[str, list[dict[str, Any]]]  # (tenant_id, outcomes)


class Recorder:
    """One writer for every outcome of this node (group commit)."""

    def __init__(
        self,
        *,
        db: Any,
        events: EventLog | None,
        settings: Any,
        notify: Callable[[str], None],
        timing: dict[str, Any] | None = None,
        max_batch: int = 500,
        min_interval_s: float = RECORD_MIN_INTERVAL_S,
    ) -> None:
        self.db = db
        self.events = events
        self.settings = settings
        self._notify = notify  # a tenant has work again (a message queued once more)
        self.timing = timing if timing is not None else {"commits": 0, "commit_s": 0.0}
        self._writer: GroupCommit[Outcomes] = GroupCommit(
            self._store,
            name="messaging-recorder",
            max_batch=max_batch,
            min_interval_s=min_interval_s,
            weight=lambda item: len(item[1]),
        )

    # -- the writer -----------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    def put(self, tenant_id: str, outcomes: list[dict[str, Any]]) -> None:
        if outcomes:
            self._writer.put((tenant_id, outcomes))

    @property
    def pending(self) -> int:
        """Outcomes queued, not yet committed."""
        return self._writer.pending

    @property
    def backlog(self) -> int:
        return self._writer.backlog

    @property
    def committed_batches(self) -> int:
        return self._writer.batches

    async def wait_below(self, limit: int, within_s: float = 1.0) -> None:
        """Backpressure: a process that sends faster than it can record stops claiming until the
        recorder catches up (otherwise every latency grows and the whole node collapses)."""
        await self._writer.wait_below(limit, within_s)

    async def flush(self, within_s: float = 10.0) -> bool:
        return await self._writer.flush(within_s)

    async def _store(self, batch: list[Outcomes]) -> None:
        """One transaction for a batch of outcomes; its events are emitted after the commit."""
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for tenant_id, outcomes in batch:
            by_tenant.setdefault(tenant_id, []).extend(outcomes)
        started = time.perf_counter()
        async with store_then_publish(self.db.begin(), self.events) as unit:
            unit.extend(await self.record_many(unit.conn, by_tenant))
        self.timing["commits"] += 1
        self.timing["commit_s"] += time.perf_counter() - started

    # -- recording ------------------------------------------------------------------------------

    async def record(self, conn: Any, tenant_id: str, outcomes: list[dict[str, Any]]) -> list[Event]:
        """:meth:`record_many` for one tenant."""
        return await self.record_many(conn, {tenant_id: outcomes})

    async def record_many(self, conn: Any, by_tenant: dict[str, list[dict[str, Any]]]) -> list[Event]:
        """Record outcomes (of any tenants) inside ``conn``'s transaction; returns (tenant, type,
        data) events. Sends of every tenant are recorded together (one round trip on MariaDB).

        ``message.sent`` for each send the provider accepted; ``message.status`` + ``message.failed``
        for each failure (the webhook's shapes); later statuses come from webhooks and Web acks."""
        now = utcnow()
        tenants = sorted(by_tenant)
        raced = await outbox_db.record_sent(
            conn, [(t, o) for t in tenants for o in by_tenant[t] if o["kind"] == "sent"], now=now
        )
        events: list[Event] = []
        for tenant_id in tenants:
            outcomes = by_tenant[tenant_id]
            others = [o for o in outcomes if o["kind"] != "sent"]
            if others:
                await outbox_db.record_outcomes(conn, tenant_id, others, now=now)
            for o in outcomes:
                if o["kind"] == "sent":
                    events += await _sent_events(conn, tenant_id, o, now, raced)
                elif o["kind"] == "failed":
                    events += _failed_events(tenant_id, o, now)
        return events

    # -- status facts that raced ------------------------------------------------------------------

    async def sweep_orphans(self, tenant_id: str) -> None:
        """Status facts that raced their send's record (a webhook faster than our commit)."""
        async with store_then_publish(self.db.begin(), self.events) as unit:
            conn = unit.conn
            ids = await outbox_db.orphan_status_message_ids(
                conn, tenant_id, utcnow() - dt.timedelta(minutes=10)
            )
            for message_id in ids:
                before = await messages_db.get_message(conn, tenant_id, message_id)
                after = await apply_recorded_statuses(conn, tenant_id, message_id)
                if before and after and after["status"] != before["status"]:
                    unit.add(tenant_id, event_types.MESSAGE_STATUS, _moved(after))


def _web_number(row: dict[str, Any]) -> str | None:
    """The business's number of an outbound message: the Web session's (the Cloud API's display
    number is not stored)."""
    return row.get("own_number") if row.get("provider") == "web" else None


def _moved(after: dict[str, Any]) -> dict[str, Any]:
    """``message.status`` data for a message (``apply_recorded_statuses``' row) that moved to its
    status."""
    error = None
    if after["status"] == "failed":
        error = event_types.message_error(after.get("error_code"), after.get("error_message"))
    return event_types.message_data(
        after, business=_web_number(after), timestamp=after["updated_at"], error=error
    )


def _outcome_message(o: dict[str, Any], status: str) -> dict[str, Any]:
    """An outcome's message as ``events.message_data`` reads a row: the claimed row's type, content,
    created_at and contact (``o["message"]``: ``outbox_db.claim``'s or ``list_unknown``'s), and what
    the send came to."""
    claimed = o.get("message") or {}
    return {
        "id": o["message_id"],
        "conversation_id": o.get("conversation_id"),
        "direction": "outbound",
        "provider": o.get("provider"),
        "provider_message_id": o.get("provider_message_id") if status == "sent" else None,
        "type": claimed.get("type"),
        "content": claimed.get("content"),
        "status": status,
        "created_at": claimed.get("created_at"),
        "wa_id": o.get("wa_id"),
        "contact_name": claimed.get("contact_name"),
        "own_number": claimed.get("own_number"),
    }


async def _sent_events(
    conn: Any, tenant_id: str, o: dict[str, Any], now: dt.datetime, raced: set[tuple[str, str]]
) -> list[Event]:
    row = _outcome_message(o, "sent")
    data = event_types.message_data(
        row, business=_web_number(row), timestamp=o.get("at") or now, route_reason=o.get("reason")
    )
    events: list[Event] = [(tenant_id, event_types.MESSAGE_SENT, data)]
    if (tenant_id, o["provider_message_id"]) in raced:  # a status beat our record: apply it
        after = await apply_recorded_statuses(conn, tenant_id, o["message_id"])
        if after and after["status"] != "sent":
            events.append((tenant_id, event_types.MESSAGE_STATUS, _moved(after)))
    return events


def _failed_events(tenant_id: str, o: dict[str, Any], now: dt.datetime) -> list[Event]:
    row = _outcome_message(o, "failed")
    data = event_types.message_data(
        row,
        business=_web_number(row),
        timestamp=now,
        error=event_types.message_error(o.get("error_code"), o.get("error_message")),
        route_reason=o.get("reason"),
    )
    return [(tenant_id, event_types.MESSAGE_STATUS, data), (tenant_id, event_types.MESSAGE_FAILED, data)]
