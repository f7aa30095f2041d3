"""One claimed batch -> the outcomes known at once, and the sends booked on the governor.

Each row is routed (``routing.decide``): a failure or a wait is an outcome now; a send gets a slot on
its road's schedule (``cloud:<phone_number_id>`` or ``web:<tenant_id>``), booked for the whole batch
in one call. Cloud sends first pass the pair limit: a recipient written to too often is put back
(``defer``) until the pair allows it. Sends are grouped into chains, one per (road, recipient), so
messages to one recipient go in order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from control_plane.db.conversations import is_bsuid
from control_plane.db.engine import utcnow
from control_plane.messaging import outcomes, routing
from control_plane.messaging.governor import Governor
from control_plane.messaging.tenant_context import TenantContext

HELD_S = 30.0  # a deactivated tenant's messages are looked at again this often

Routed = tuple[dict[str, Any], routing.Decision]  # a claimed row and its road
Slot = tuple[dict[str, Any], routing.Decision, float]  # ... and the loop time it may go


@dataclass
class Plan:
    immediate: list[dict[str, Any]] = field(default_factory=list)  # outcomes to record now
    chains: dict[tuple[str, str], list[Slot]] = field(default_factory=dict)  # (road, wa_id) -> sends
    last: float = 0.0  # loop time of the last slot booked (or of planning, when none)
    waits_for_web: bool = False  # a message waits for the tenant's Web session
    dry_s: float = 0.0  # how long the number's schedule had run dry before this batch


class BatchPlanner:
    def __init__(self, governor: Governor, settings: Any) -> None:
        self.governor = governor
        self.settings = settings

    async def plan(self, tenant_id: str, ctx: TenantContext, rows: list[dict[str, Any]]) -> Plan:
        now = utcnow()
        plan = Plan(last=asyncio.get_running_loop().time())
        web_rows, cloud_rows = self._route(plan, ctx, rows, now)
        if cloud_rows and ctx.creds is not None:
            number = f"cloud:{ctx.creds.phone_number_id}"
            go = await self._pair_limit(plan, number, cloud_rows, now)
            idle = self.governor.idle_s(number)
            if idle is not None and go:
                plan.dry_s = idle
            await self._book(plan, number, [self.governor.cloud_interval()] * len(go), go, routing.CLOUD)
        if web_rows:
            gaps = self.governor.web_intervals(len(web_rows))
            await self._book(plan, f"web:{tenant_id}", gaps, web_rows, routing.WEB)
        return plan

    def _route(
        self, plan: Plan, ctx: TenantContext, rows: list[dict[str, Any]], now: dt.datetime
    ) -> tuple[list[Routed], list[Routed]]:
        """(rows for the Web session, rows for the Cloud API); the others' outcomes go in the plan."""
        web_rows: list[Routed] = []
        cloud_rows: list[Routed] = []
        for row in rows:
            if not ctx.active:  # held, not failed: the tenant may be reactivated
                held_until = now + dt.timedelta(seconds=HELD_S)
                plan.immediate.append(
                    outcomes.defer(row, None, held_until, "held: the tenant is deactivated")
                )
                continue
            decision = routing.decide(
                kind=row["type"],
                requested=row["requested_provider"],
                roads=ctx.roads,
                last_inbound_at=row["last_inbound_at"],
                now=now,
                web_capable=routing.web_capable(row["type"], row.get("content") or {}),
                bsuid_recipient=is_bsuid(row["wa_id"]),
            )
            if decision.action == routing.FAIL:
                code, why = decision.error_code, decision.reason
                plan.immediate.append(outcomes.failed(row, decision.provider, code, why, why))
            elif decision.action == routing.WAIT:
                plan.waits_for_web |= decision.provider == routing.WEB
                code, why = decision.error_code or "not_available", decision.reason
                plan.immediate.append(outcomes.retry(row, self.settings, decision.provider, code, why, why))
            elif decision.provider == routing.WEB:
                web_rows.append((row, decision))
            else:
                cloud_rows.append((row, decision))
        return web_rows, cloud_rows

    async def _pair_limit(
        self, plan: Plan, number: str, rows: list[Routed], now: dt.datetime
    ) -> list[Routed]:
        """The rows the pair limit lets go now; the others are put back until it does."""
        delays = await self.governor.pair_delays(number, [r["wa_id"] for r, _ in rows])
        go = []
        for (row, decision), delay in zip(rows, delays, strict=True):
            if delay > 0:
                at = now + dt.timedelta(seconds=delay)
                why = f"paced: pair limit to {row['wa_id']} ({delay:.1f} s)"
                plan.immediate.append(outcomes.defer(row, routing.CLOUD, at, why))
            else:
                go.append((row, decision))
        return go

    async def _book(self, plan: Plan, key: str, gaps: list[float], rows: list[Routed], road: str) -> None:
        slots = await self.governor.reserve(key, gaps)
        base = asyncio.get_running_loop().time()
        for (row, decision), delay in zip(rows, slots, strict=True):
            plan.chains.setdefault((road, row["wa_id"]), []).append((row, decision, base + delay))
            plan.last = max(plan.last, base + delay)
