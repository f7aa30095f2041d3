"""The dispatcher (``app["dispatcher"]``): per-tenant loops that claim queued messages, route them,
send them within the rate governor, and record what happened.

Shape (one node)::

    scanner (every MESSAGING_POLL_S) --wakes--> tenant loop (one per tenant with work)
        claim a batch (FOR UPDATE SKIP LOCKED; marks rows "sending": the lease), about one second of
        the road's rate; the next one LOOKAHEAD_S before this one's last slot, so the schedule
        never runs dry while a claim waits on a busy loop
        route each message (routing.decide) -> fail now | wait (retry later) | send on web / business_api
        book governor slots for the batch (batch.py) -> one task per recipient chain (order kept per
        recipient); each send goes through its road's provider (providers/web.py, providers/cloud.py:
        ``send(message) -> Outcome``); each Cloud send also passes the per-number window guard
        (Governor.window_acquire)
        each send's outcome (outcomes.py) -> recorder (recorder.py; group commit: one transaction
        for everything that finished since the last commit, every tenant's sends in one round trip
        on MariaDB, at most one commit per RECORD_MIN_INTERVAL_S while busy; then message.sent /
        message.status / message.failed are emitted)

Several nodes share the work through the database: claims skip each other's locked rows (MariaDB),
and the governor's schedule lives in Redis when REDIS_URL is set.

Exactly once, and the window that remains
-----------------------------------------
A message is claimed (committed "sending", with ``claimed_by``/``claimed_at``) before it is sent, and
its answer is committed right after (group commit: within RECORD_MIN_INTERVAL_S plus one commit,
30-60 ms under full load, a few ms when quiet). Each send is also written to this node's send
journal (``send_journal.py``) just before it leaves and when it is answered. After a crash (kill -9)
in between, ``recovery.py`` settles the rows left "sending": at once by the next process on the same
node from the journal, else after their lease; a send whose answer nobody saw is "unknown" and is
NOT simply sent again: a provider's confirmation (Cloud API status webhooks echo our id as
``biz_opaque_callback_data``; a Web ack no row claims) records it as sent, and only without one
within the measured reconcile delay is it queued again. What remains: a request open at the instant
of the crash that the provider accepted and whose confirmation is lost or later than the delay (about
rate x the request's duration per number). The same rules apply to a send that timed out
(GraphAPITimeout / bridge timeout): "unknown", never blindly retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from typing import Any

from control_plane.db import outbox as outbox_db
from control_plane.db.engine import utcnow
from control_plane.messaging import optout, outcomes, routing, tenant_context
from control_plane.messaging.batch import BatchPlanner, Slot
from control_plane.messaging.conversations import CanonicalAdopter, References
from control_plane.messaging.governor import Governor, sleep_until
from control_plane.messaging.inbound import InboundService
from control_plane.messaging.recorder import Recorder
from control_plane.messaging.recovery import Recovery
from control_plane.messaging.send_journal import SendJournal
from control_plane.messaging.tenant_context import CONTEXT_TTL_S, TenantContext
from control_plane.messaging.web_ingest import WebIngest
from control_plane.providers.base import OutboundMessage, Outcome, Provider, Retryable, Sent
from control_plane.providers.cloud import CloudProvider
from control_plane.providers.cloud_api import CloudAPIClient
from control_plane.providers.web import WebProvider

log = logging.getLogger(__name__)

# Claim the next batch this long before the current one's last slot: a claim is several round trips
# that wait for a busy event loop each (100-800 ms under load); a schedule that runs dry loses that.
LOOKAHEAD_S = 1.0
RECORD_BACKLOG_MAX = 1000  # outcomes sent but not yet committed, per node, before claiming pauses

_STAT_OF_KIND = {
    outcomes.SENT: "sent",
    outcomes.FAILED: "failed",
    outcomes.RETRY: "retried",
    outcomes.DEFER: "deferred",
    outcomes.UNKNOWN: "unknown",
}


class Dispatcher:
    def __init__(
        self,
        *,
        db: Any,
        settings: Any,
        secret_box: Any,
        cloud_api: CloudAPIClient | None,
        supervisor: Any = None,
        events: Any = None,
        redis: Any = None,
        node_id: str | None = None,
        inbound: InboundService | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.secret_box = secret_box
        self.cloud_api = cloud_api
        self.supervisor = supervisor
        self.events = events
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:12]}"
        self.governor = Governor.from_settings(settings, redis)
        resolve = References(db).resolve
        self.web = WebProvider(supervisor, resolve)
        self.cloud = CloudProvider(cloud_api, self.governor, resolve, rate_per_s=settings.cloud_rate_per_s)
        self.adopter = CanonicalAdopter(db)
        self.planner = BatchPlanner(self.governor, settings)
        self._loops: dict[str, asyncio.Task] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, set[asyncio.Task]] = {}
        self._contexts: dict[str, TenantContext] = {}
        self._recent_tenants: dict[str, float] = {}
        self._waiting_web: set[str] = set()  # tenants with messages waiting for their session
        self._scanner: asyncio.Task | None = None
        self._closing = False
        self.timing: dict[str, float] = dict.fromkeys(
            ("claims", "claim_s", "commits", "commit_s", "late_s", "sends", "dry_s", "claim_max_s"), 0
        )
        self.stats = dict.fromkeys(
            (
                "sent",
                "failed",
                "retried",
                "deferred",
                "unknown",
                "recovered",
                "requeued_unknown",
                "taken_over",
            ),
            0,
        )
        self.recorder = Recorder(
            db=db, events=events, settings=settings, notify=self.notify, timing=self.timing
        )
        self.journal: SendJournal | None = None  # opened by start()
        self.recovery = Recovery(
            db=db, events=events, settings=settings, recorder=self.recorder, notify=self.notify
        )
        self._own_inbound = inbound is None  # Web events go to the app's inbound service, else our own
        self.inbound = inbound or InboundService(db, lambda: events)
        self.web_ingest = WebIngest(self.inbound, db, lambda: events)

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.journal = self.recovery.journal = SendJournal.open(self.settings.data_dir, self.node_id)
        self.recorder.start()
        if self._own_inbound:
            self.inbound.start()
        if self.supervisor is not None and hasattr(self.supervisor, "add_message_listener"):
            self.supervisor.add_message_listener(self.web_ingest)
        self._scanner = asyncio.create_task(self._scan_loop(), name="messaging-scanner")
        log.info("messaging dispatcher started node=%s", self.node_id)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop claiming; let sends in flight finish (up to ``grace_s``) and record them."""
        self._closing = True
        tasks = [t for t in [self._scanner, *self._loops.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        inflight = [t for s in self._inflight.values() for t in s]
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=grace_s)
            for task in pending:
                task.cancel()  # left "sending": the lease and reconciliation settle them
            await asyncio.gather(*pending, return_exceptions=True)
        await self.web_ingest.flush(grace_s)  # Web events received so far
        if self._own_inbound:
            await self.inbound.stop()
        await self.adopter.wait(grace_s)
        await self.recorder.flush(grace_s)
        await self.recorder.stop()
        if self.journal is not None:
            self.journal.close()  # left for the next process here, for any send left unrecorded
        t = self.timing
        log.info(
            "messaging dispatcher stopped node=%s stats=%s claims=%d (avg %.1f ms) commits=%d (avg %.1f ms) "
            "sends=%d (avg %.1f ms late) schedules ran dry for %.2f s (claims max %.0f ms)",
            self.node_id,
            self.stats,
            t["claims"],
            1000 * t["claim_s"] / max(1, t["claims"]),
            t["commits"],
            1000 * t["commit_s"] / max(1, t["commits"]),
            t["sends"],
            1000 * t["late_s"] / max(1, t["sends"]),
            t["dry_s"],
            1000 * t["claim_max_s"],
        )

    def notify(self, tenant_id: str) -> None:
        """There may be work for ``tenant_id`` now (a new message, a session that became ready)."""
        if self._closing:
            return
        wake = self._wakes.setdefault(tenant_id, asyncio.Event())
        wake.set()
        loop = self._loops.get(tenant_id)
        if loop is None or loop.done():
            self._loops[tenant_id] = asyncio.create_task(
                self._tenant_loop(tenant_id), name=f"dispatch-{tenant_id}"
            )

    # -------------------------------------------------------------------------------- context

    async def context(self, tenant_id: str, *, fresh: bool = False) -> TenantContext:
        """The tenant's roads: its config (cached ``CONTEXT_TTL_S``) with the live state over it."""
        now = time.monotonic()
        ctx = self._contexts.get(tenant_id)
        if ctx is None or fresh or now - ctx.loaded_at > CONTEXT_TTL_S:
            ctx = await tenant_context.load(self.db, self.secret_box, self.settings, tenant_id, now)
            self._contexts[tenant_id] = ctx
        web_ready = bool(self.supervisor is not None and self.supervisor.is_ready(tenant_id))
        state = "ready" if web_ready else "not running"
        state_fn = getattr(self.supervisor, "state", None)
        if not web_ready and callable(state_fn):
            st = state_fn(tenant_id)
            state = f"not ready (state {getattr(st, 'value', st) or 'stopped'})"
        ctx.roads = tenant_context.with_live_state(
            ctx.roads, web_ready=web_ready, web_state=state, cloud_blocked=self.cloud.blocked(tenant_id)
        )
        return ctx

    def invalidate(self, tenant_id: str) -> None:
        """The tenant's config changed."""
        self._contexts.pop(tenant_id, None)
        self.cloud.unblock(tenant_id)

    # ------------------------------------------------------------------------------ the loops

    async def _scan_loop(self) -> None:
        last_orphans = 0.0
        while True:
            try:
                now = utcnow()
                async with self.db.connect() as conn:
                    due = await outbox_db.due_tenants(conn, now)
                for tenant_id in due:
                    self.notify(tenant_id)
                await self._wake_ready_sessions()
                await self.recover()
                if time.monotonic() - last_orphans > 5.0:
                    last_orphans = time.monotonic()
                    await self._sweep_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("messaging scan failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.settings.messaging_poll_s)

    async def _wake_ready_sessions(self) -> None:
        for tenant_id in list(self._waiting_web):
            if self.supervisor is not None and self.supervisor.is_ready(tenant_id):
                self._waiting_web.discard(tenant_id)
                async with self.db.begin() as conn:
                    await outbox_db.bring_forward(conn, tenant_id)
                self.notify(tenant_id)

    async def _tenant_loop(self, tenant_id: str) -> None:
        wake = self._wakes.setdefault(tenant_id, asyncio.Event())
        inflight = self._inflight.setdefault(tenant_id, set())
        errors_in_row = 0
        try:
            while not self._closing:
                wake.clear()
                try:
                    ctx = await self.context(tenant_id)
                    limit = tenant_context.claim_size(ctx.roads, self.settings)
                    rows = await self._claim(tenant_id, limit)
                    errors_in_row = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors_in_row += 1
                    log.warning("dispatch claim failed tenant=%s: %s: %s", tenant_id, type(exc).__name__, exc)
                    await asyncio.sleep(min(5.0, 0.2 * 2**errors_in_row))
                    continue
                if not rows:
                    if await self._idle(tenant_id, wake, inflight):
                        return  # idle: the scanner or notify() starts a new loop when work arrives
                    continue
                self._recent_tenants[tenant_id] = time.monotonic()
                last = await self._dispatch_batch(tenant_id, ctx, rows, inflight)
                await sleep_until(last - LOOKAHEAD_S)
                while len(inflight) > 3 * limit:
                    await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED, timeout=1.0)
                while self.recorder.pending > RECORD_BACKLOG_MAX and not self._closing:
                    await self.recorder.wait_below(RECORD_BACKLOG_MAX // 2)
        finally:
            if self._loops.get(tenant_id) is asyncio.current_task():
                del self._loops[tenant_id]

    async def _claim(self, tenant_id: str, limit: int) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        async with self.db.begin() as conn:
            rows: list[dict[str, Any]] = await outbox_db.claim(conn, tenant_id, self.node_id, limit=limit)
        took = time.perf_counter() - t0
        self.timing["claims"] += 1
        self.timing["claim_s"] += took
        self.timing["claim_max_s"] = max(self.timing["claim_max_s"], took)
        return rows

    async def _idle(self, tenant_id: str, wake: asyncio.Event, inflight: set[asyncio.Task]) -> bool:
        """Nothing to claim: wait for the next due message or a wake; True when the loop may end."""
        async with self.db.connect() as conn:
            nxt = await outbox_db.next_due_at(conn, tenant_id)
        if wake.is_set():
            return False
        if nxt is None and not inflight:
            return True
        wait = self.settings.messaging_poll_s
        if nxt is not None:
            wait = min(wait, max(0.01, (nxt - utcnow()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
        return False

    async def _dispatch_batch(
        self, tenant_id: str, ctx: TenantContext, rows: list[dict[str, Any]], inflight: set[asyncio.Task]
    ) -> float:
        """Route a claimed batch and schedule its sends; returns the loop time of its last slot."""
        rows = await self._refuse_opted_out(tenant_id, rows)
        plan = await self.planner.plan(tenant_id, ctx, rows)
        if plan.waits_for_web:
            self._waiting_web.add(tenant_id)
        self.timing["dry_s"] += plan.dry_s
        self._count(plan.immediate)
        self.recorder.put(tenant_id, plan.immediate)
        for chain in plan.chains.values():
            task = asyncio.create_task(self._run_chain(tenant_id, ctx, chain))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        return plan.last

    async def _refuse_opted_out(self, tenant_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """MARKETING templates to contacts who stopped them fail now (``optout.py``); the rest."""
        blocked = await optout.blocked_rows(self.db, tenant_id, rows)
        if not blocked:
            return rows
        why = "not sent: " + optout.MESSAGE
        failed = [
            outcomes.failed(r, None, optout.CODE, optout.MESSAGE, why)
            for r in rows
            if r["message_id"] in blocked
        ]
        self._count(failed)
        self.recorder.put(tenant_id, failed)
        return [r for r in rows if r["message_id"] not in blocked]

    async def _run_chain(self, tenant_id: str, ctx: TenantContext, chain: list[Slot]) -> None:
        loop = asyncio.get_running_loop()
        for row, decision, deadline in chain:
            await sleep_until(deadline)
            self.timing["sends"] += 1
            self.timing["late_s"] += max(0.0, loop.time() - deadline)
            try:
                outcome = await self._send_one(tenant_id, ctx, row, decision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("send crashed tenant=%s message=%s", tenant_id, row["message_id"])
                why = f"internal error: {exc!r}"
                outcome = outcomes.unknown(row, self.settings, decision.provider, decision.reason, why)
            self._count([outcome])
            self.recorder.put(tenant_id, [outcome])

    def _count(self, recorded: list[dict[str, Any]]) -> None:
        for o in recorded:
            self.stats[_STAT_OF_KIND[o["kind"]]] += 1

    # --------------------------------------------------------------------------------- sending

    async def _send_one(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        if decision.provider != routing.WEB:
            return await self._send_cloud(tenant_id, ctx, row, decision)
        outcome = await self._via(self.web, tenant_id, row)
        if isinstance(outcome, Retryable) and outcome.not_ready:
            return await self._web_went_down(tenant_id, ctx, row, decision, outcome)
        return outcomes.from_provider(row, self.settings, routing.WEB, decision.reason, outcome)

    async def _web_went_down(
        self,
        tenant_id: str,
        ctx: TenantContext,
        row: dict[str, Any],
        decision: routing.Decision,
        outcome: Retryable,
    ) -> dict[str, Any]:
        """Nothing was sent: the Cloud API takes it when the policy allows, else it waits for the
        session."""
        fallback = routing.fallback_on_web_down(
            ctx.roads, row["requested_provider"], row["type"], row["last_inbound_at"], utcnow()
        )
        if fallback is not None and ctx.creds is not None:
            number = f"cloud:{ctx.creds.phone_number_id}"
            (delay,) = await self.governor.reserve(number, [self.governor.cloud_interval()])
            await asyncio.sleep(delay)
            return await self._send_cloud(tenant_id, ctx, row, fallback)
        self._waiting_web.add(tenant_id)
        return outcomes.retry(row, self.settings, routing.WEB, outcome.code, outcome.message, decision.reason)

    async def _send_cloud(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        template = ctx.roads.fallback_template if decision.use_fallback_template else None
        if template is not None and await optout.blocked(self.db, tenant_id, [(row["wa_id"], template)]):
            return outcomes.failed(row, routing.CLOUD, optout.CODE, optout.MESSAGE, decision.reason)
        outcome = await self._via(self.cloud, tenant_id, row, creds=ctx.creds, fallback_template=template)
        if isinstance(outcome, Sent) and outcome.canonical_wa_id:
            self.adopter.adopt(tenant_id, row["conversation_id"], row["wa_id"], outcome.canonical_wa_id)
        return outcomes.from_provider(row, self.settings, routing.CLOUD, decision.reason, outcome)

    async def _via(self, road: Provider, tenant_id: str, row: dict[str, Any], **cloud: Any) -> Outcome:
        """One send on ``road``, written down as it leaves and when answered (send_journal.py)."""
        journal = self.journal
        if journal is None:
            return await road.send(_outbound(tenant_id, row, **cloud))
        mid, attempt = row["message_id"], row["attempts"]
        on_wire = functools.partial(journal.sending, mid, attempt, road.name)
        outcome = await road.send(_outbound(tenant_id, row, on_wire=on_wire, **cloud))
        journal.answered(mid, attempt, road.name, outcome)
        return outcome

    # ---------------------------------------------------------------- recovery (recovery.py)

    async def recover(self) -> dict[str, int]:
        """Settle claims whose answer was never recorded (crash or timeout mid-send); see recovery.py."""
        result = await self.recovery.run()
        self.stats["recovered"] += result["recovered"]
        self.stats["requeued_unknown"] += result["requeued"]
        self.stats["taken_over"] += result["taken_over"]
        return result

    async def _sweep_orphans(self) -> None:
        """Status facts that raced their send's record (a webhook faster than our commit)."""
        horizon = time.monotonic() - 600
        for tenant_id in [t for t, at in self._recent_tenants.items() if at >= horizon]:
            await self.recorder.sweep_orphans(tenant_id)
        self._recent_tenants = {t: at for t, at in self._recent_tenants.items() if at >= horizon}

    # ---------------------------------------------------------------------------- mark read

    async def mark_read(self, tenant_id: str, conversation: dict[str, Any]) -> dict[str, Any]:
        """Forward "read" to the road that carried the conversation; returns {provider, forwarded, error}."""
        provider = conversation.get("provider_last")
        async with self.db.connect() as conn:
            last_in = await outbox_db.latest_inbound(conn, tenant_id, conversation["id"])
        if last_in is not None:
            provider = last_in["provider"] or provider
        out: dict[str, Any] = {"provider": provider, "forwarded": False, "error": None}
        try:
            if provider == routing.WEB:
                if self.supervisor is None:
                    raise RuntimeError("no Web session supervisor")
                await self.supervisor.mark_read(tenant_id, f"{conversation['wa_id']}@c.us")
                out["forwarded"] = True
            elif provider == routing.CLOUD:
                ctx = await self.context(tenant_id)
                if ctx.creds is None or self.cloud_api is None:
                    raise RuntimeError("the Business API is not configured")
                if last_in is None or not last_in["provider_message_id"]:
                    raise RuntimeError("no inbound message to mark as read")
                await self.cloud_api.mark_read(ctx.creds, last_in["provider_message_id"])
                out["forwarded"] = True
            else:
                out["error"] = "no provider has carried this conversation yet"
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.info("mark read not forwarded tenant=%s provider=%s: %s", tenant_id, provider, out["error"])
        return out


# --------------------------------------------------------------------------------------- helpers


def _outbound(tenant_id: str, row: dict[str, Any], **extra: Any) -> OutboundMessage:
    """A claimed row as the providers take it (``extra``: creds, fallback_template, on_wire)."""
    return OutboundMessage(
        tenant_id, row["message_id"], row["wa_id"], row["type"], row["content"] or {}, **extra
    )
