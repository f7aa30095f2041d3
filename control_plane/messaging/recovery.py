"""Crash recovery of the outbox: claims whose answer was never recorded (see the dispatcher's
docstring for the whole story). Run by the dispatcher's scanner, every MESSAGING_POLL_S:

1. ``take_over``: the claims of a dead process on this node (its send journal's lock is free, see
   ``send_journal.py``) are settled at once, without waiting for their lease: accepted -> recorded
   as sent; never sent -> queued again; in flight at the crash -> unknown.
2. Leases of any node that stopped answering expire (MESSAGING_LEASE_S) into unknown.
3. ``_settle_unknown``: an unknown row is sent when the provider confirms it (a Cloud API status
   naming our id in ``biz_opaque_callback_data``; a Web ack no message claims), else queued again
   once its reconcile delay has passed with statuses coming in meanwhile, and in any case after
   MESSAGING_RECONCILE_S.

The reconcile delay is measured: per tenant and road, the p99 of the time from a send's answer to
its first status fact (``StatusDelays``), times MESSAGING_RECONCILE_FACTOR, at least
MESSAGING_RECONCILE_MIN_S and at most MESSAGING_RECONCILE_S. A send that never got a status counts
as endless, so a tenant whose webhooks go missing waits the whole MESSAGING_RECONCILE_S.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.db import outbox as outbox_db
from control_plane.db.engine import utcnow
from control_plane.messaging import send_journal
from control_plane.messaging.recorder import Recorder
from control_plane.messaging.send_journal import DeadJournal, SendJournal
from control_plane.realtime.unit import EventLog, Unit, store_then_publish
from control_plane.statuses import OutboxState

log = logging.getLogger(__name__)

QUANTILE = 0.99
MIN_SAMPLES = 20  # fewer sends with a known fate: nothing measured, the longest wait applies
DELAYS_TTL_S = 30.0
NOT_MEASURED_TTL_S = 2.0  # while statuses are missing (late after an outage, say): look again soon
TAKE_OVER_BATCH = 500


def reconcile_delay_s(
    samples: Sequence[float | None], *, factor: float, floor_s: float, cap_s: float
) -> float | None:
    """``factor`` x the p99 of ``samples`` (seconds from a send to its first status; None: no status
    came) within [floor_s, cap_s]; None when there are too few samples or the p99 send got no
    status at all (wait for ``cap_s``)."""
    if len(samples) < MIN_SAMPLES:
        return None
    ordered = sorted(math.inf if s is None else s for s in samples)
    p99 = ordered[max(0, math.ceil(QUANTILE * len(ordered)) - 1)]
    if math.isinf(p99):
        return None
    return min(cap_s, max(floor_s, factor * p99))


class StatusDelays:
    """The reconcile delay of each (tenant, road), measured from the database and kept DELAYS_TTL_S."""

    def __init__(self, settings: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, float | None]] = {}

    async def delay_s(self, conn: Any, tenant_id: str, provider: str) -> float | None:
        key, now = (tenant_id, provider), self._clock()
        known = self._known.get(key)
        if known is not None and now - known[0] < (NOT_MEASURED_TTL_S if known[1] is None else DELAYS_TTL_S):
            return known[1]
        s = self.settings
        # Sends younger than the floor are left out (their status may be on its way); older ones
        # still without one count as endless: the estimate can only err long.
        before = utcnow() - dt.timedelta(seconds=s.messaging_reconcile_min_s)
        samples = await outbox_db.status_delays(conn, tenant_id, provider, before=before)
        delay = reconcile_delay_s(
            samples,
            factor=s.messaging_reconcile_factor,
            floor_s=s.messaging_reconcile_min_s,
            cap_s=s.messaging_reconcile_s,
        )
        self._known[key] = (now, delay)
        return delay


class Recovery:
    """See the module docstring; ``run()`` once per scan."""

    def __init__(
        self,
        *,
        db: Any,
        events: EventLog | None,
        settings: Any,
        recorder: Recorder,
        notify: Callable[[str], None],
        journal: SendJournal | None = None,
    ) -> None:
        self.db = db
        self.events = events
        self.settings = settings
        self.recorder = recorder
        self._notify = notify  # a tenant has work again
        self.journal = journal
        self.delays = StatusDelays(settings)

    async def run(self) -> dict[str, int]:
        s = self.settings
        result = {"taken_over": 0, "expired": 0, "recovered": 0, "requeued": 0}
        if self.journal is not None:
            result["taken_over"] = await self.take_over(self.journal)
        now = utcnow()
        async with self.db.begin() as conn:
            result["expired"] = await outbox_db.expire_leases(
                conn,
                now - dt.timedelta(seconds=s.messaging_lease_s),
                now + dt.timedelta(seconds=s.messaging_reconcile_s),
            )
        if result["expired"]:
            log.warning(
                "messaging: %d message(s) were mid-send on a node that stopped; waiting up to %.0f s "
                "for the provider's confirmation",
                result["expired"],
                s.messaging_reconcile_s,
            )
        async with store_then_publish(self.db.begin(), self.events) as unit:
            by_tenant = await self._settle_unknown(unit, now, result)
            for tenant_id, outcomes in by_tenant.items():
                unit.extend(await self.recorder.record(unit.conn, tenant_id, outcomes))
                result["recovered"] += len(outcomes)
        if result["recovered"] or result["requeued"]:
            log.warning("messaging recovery: %s", result)
        return result

    # -- 1. a dead process of this node ---------------------------------------------------------

    async def take_over(self, journal: SendJournal) -> int:
        """Settles the claims of every dead process whose journal is here; their number."""
        taken = 0
        for dead in await asyncio.to_thread(journal.dead):
            done = False
            try:
                while True:
                    rows = await self._take_over_batch(dead)
                    taken += rows
                    if rows < TAKE_OVER_BATCH:
                        break
                done = True
            except Exception:
                log.exception("messaging: taking over the claims of %s failed; next scan retries", dead.owner)
            finally:
                await asyncio.to_thread(dead.remove if done else dead.release)
        return taken

    async def _take_over_batch(self, dead: DeadJournal) -> int:
        """One batch of the dead process's claims, judged by its journal (send_journal.py)."""
        async with store_then_publish(self.db.begin(), self.events) as unit:
            conn = unit.conn
            rows = await outbox_db.claims_of(conn, dead.owner, limit=TAKE_OVER_BATCH)
            judged = _judge(rows, dead)
            for tenant_id, outcomes in judged.sent.items():
                unit.extend(await self.recorder.record(conn, tenant_id, outcomes))
            why = f"claimed by {dead.owner}, which died before sending it: queued again"
            for (tenant_id, state), ids in judged.unsent.items():
                await outbox_db.requeue(conn, tenant_id, ids, why[:255], state=OutboxState(state))
            decide_at = utcnow() + dt.timedelta(seconds=self.settings.messaging_reconcile_s)
            why = f"in flight when {dead.owner} died: waiting for the provider's confirmation"
            for provider, ids in judged.in_flight.items():
                await outbox_db.to_unknown(conn, ids, decide_at, why, provider=provider)
            await outbox_db.release_claims(conn, judged.left_unknown)
        for tenant_id, _ in judged.unsent:
            self._notify(tenant_id)
        if rows:
            log.warning(
                "messaging: took over %d claim(s) of %s (died on this node): %s",
                len(rows),
                dead.owner,
                judged.counts(),
            )
        return len(rows)

    # -- 3. unknown rows ------------------------------------------------------------------------

    async def _settle_unknown(
        self, unit: Unit[Any], now: dt.datetime, result: dict[str, int]
    ) -> dict[str, list[dict[str, Any]]]:
        """Unknown rows the provider confirmed, as "sent" outcomes per tenant; the others, once
        their reconcile delay is over, queued again."""
        s, conn = self.settings, unit.conn
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        flowing: dict[tuple[str, str], dt.datetime | None] = {}
        for row in await outbox_db.list_unknown(conn):
            tenant_id = row["tenant_id"]
            claimed = row["claimed_at"] or now
            fact = await outbox_db.find_cloud_confirmation(
                conn, tenant_id, row["message_id"], claimed - dt.timedelta(seconds=5)
            )
            provider = "business_api"
            if fact is None and row["wa_id"]:
                fact = await outbox_db.find_web_confirmation(
                    conn,
                    tenant_id,
                    row["wa_id"],
                    claimed - dt.timedelta(seconds=1),
                    claimed + dt.timedelta(seconds=s.messaging_lease_s),
                )
                provider = "web"
            if fact is not None:
                by_tenant.setdefault(tenant_id, []).append(_confirmed(row, provider, fact))
                continue
            why = await self._resend_reason(conn, row, now, flowing)
            if why is not None:
                await outbox_db.requeue_unknown(conn, tenant_id, row["message_id"], why)
                result["requeued"] += 1
                self._notify(tenant_id)
        return by_tenant

    async def _resend_reason(
        self,
        conn: Any,
        row: dict[str, Any],
        now: dt.datetime,
        flowing: dict[tuple[str, str], dt.datetime | None],
    ) -> str | None:
        """Why an unconfirmed unknown row is sent again now, or None (keep waiting)."""
        s = self.settings
        if row["next_attempt_at"] <= now:
            return (
                f"outcome unknown and no provider confirmation within {s.messaging_reconcile_s:.0f} s: "
                "sending again"
            )
        provider = row["route_provider"]
        if provider is None:
            return None
        delay = await self.delays.delay_s(conn, row["tenant_id"], provider)
        since = row["updated_at"]
        if delay is None or now < since + dt.timedelta(seconds=delay):
            return None
        key = (row["tenant_id"], provider)
        if key not in flowing:
            flowing[key] = await outbox_db.last_status_at(conn, row["tenant_id"], provider)
        last = flowing[key]
        if last is None or last <= since:  # no status has come in since: webhooks may be late
            return None
        return (
            f"outcome unknown and no provider confirmation within {delay:.1f} s "
            f"({s.messaging_reconcile_factor:g}x the p99 status delay) while statuses kept coming: "
            "sending again"
        )


@dataclass
class _Judged:
    """A batch of a dead process's claims, by what its journal says."""

    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # tenant -> outcomes
    unsent: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (tenant, state) -> ids
    in_flight: dict[str | None, list[str]] = field(default_factory=dict)  # provider -> ids (sending)
    left_unknown: list[str] = field(default_factory=list)  # in flight, already unknown (lease expired)

    def counts(self) -> dict[str, int]:
        return {
            "accepted": sum(map(len, self.sent.values())),
            "unsent": sum(map(len, self.unsent.values())),
            "in_flight": sum(map(len, self.in_flight.values())) + len(self.left_unknown),
        }


def _judge(rows: list[dict[str, Any]], dead: DeadJournal) -> _Judged:
    judged = _Judged()
    for row in rows:
        mid = row["message_id"]
        verdict = dead.verdict(mid, row["attempts"], row["claimed_at"])
        entry = dead.entries.get(mid)
        if verdict == send_journal.ACCEPTED and entry and entry.provider and row["conversation_id"]:
            judged.sent.setdefault(row["tenant_id"], []).append(_accepted(row, entry, dead.owner))
        elif verdict == send_journal.UNSENT:
            judged.unsent.setdefault((row["tenant_id"], row["state"]), []).append(mid)
        elif row["state"] == OutboxState.SENDING:  # in flight at the crash, or beyond the journal
            judged.in_flight.setdefault(entry.provider if entry else None, []).append(mid)
        else:
            judged.left_unknown.append(mid)
    return judged


def _accepted(row: dict[str, Any], entry: send_journal.Entry, owner: str) -> dict[str, Any]:
    """A "sent" outcome for a claim its dead process's journal saw accepted."""
    how = f"recovered from the send journal of {owner} (died before recording the answer)"
    return _recovered_sent(row, entry.provider, entry.provider_message_id, how)


def _confirmed(row: dict[str, Any], provider: str, fact: dict[str, Any]) -> dict[str, Any]:
    """A "sent" outcome for an unknown row the provider confirmed."""
    pmid = fact["provider_message_id"]
    how = f"recovered after an unknown outcome: the provider confirmed {pmid[:40]}"
    return _recovered_sent(row, provider, pmid, how)


def _recovered_sent(row: dict[str, Any], provider: str | None, pmid: str | None, how: str) -> dict[str, Any]:
    """A "sent" outcome for a claimed row whose send was found to have gone out (``how``)."""
    return {
        "message_id": row["message_id"],
        "kind": "sent",
        "provider": provider,
        "provider_message_id": pmid,
        "conversation_id": row["conversation_id"],
        "wa_id": row["wa_id"],
        "message": row.get("message"),
        "reason": f"{row['route_reason'] or 'sent'}; {how}",
    }
