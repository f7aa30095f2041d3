"""The dispatcher (``app["dispatcher"]``): per-tenant loops that claim queued messages, route them,
send them within the rate governor, and record what happened.

Shape (one node)::

    scanner (every MESSAGING_POLL_S) --wakes--> tenant loop (one per tenant with work)
        claim a batch (FOR UPDATE SKIP LOCKED; marks rows "sending": the lease), about one second of
        the road's rate; the next one LOOKAHEAD_S before this one's last slot, so the schedule
        never runs dry while a claim waits on a busy loop
        route each message (routing.decide) -> fail now | wait (retry later) | send on web / business_api
        book governor slots for the batch -> one task per recipient chain (order kept per recipient);
        each Cloud send also passes the per-number window guard (Governor.window_acquire)
        each send's outcome -> recorder (group commit: one transaction for everything that finished
        since the last commit, every tenant's sends in one round trip on MariaDB, at most one commit
        per RECORD_MIN_INTERVAL_S while busy; then message.sent / message.status / message.failed
        are emitted)

Several nodes share the work through the database: claims skip each other's locked rows (MariaDB),
and the governor's schedule lives in Redis when REDIS_URL is set.

Exactly once, and the window that remains
-----------------------------------------
A message is claimed (committed "sending", with ``claimed_by``/``claimed_at``) before it is sent, and
its answer is committed right after (group commit: within RECORD_MIN_INTERVAL_S plus one commit,
30-60 ms under full load, a few ms when quiet). A crash (kill -9) in between
leaves rows "sending"; once their lease (MESSAGING_LEASE_S, longer than any send can take) expires
they become "unknown" and are NOT simply sent again:

- Cloud API: every send carries ``biz_opaque_callback_data = <our message id>``, which Meta echoes in
  the status webhooks. A stored status fact naming our id settles it: recorded as sent with that wamid.
- Web: the bridge's own ack events for a message id no row of ours knows, to the same recipient,
  during the claim's lease, settle it the same way.
- Neither within MESSAGING_RECONCILE_S: the message is queued again (recorded in its history).

What remains: a message the provider accepted in the tens of milliseconds between its answer and our
commit, whose confirmation never reaches us within the reconcile wait — for the Cloud API, when the
status webhook is not delivered to us within MESSAGING_RECONCILE_S (webhooks down or misrouted); for
Web, when the bridge died before emitting the ack (it acks ~30 ms after sending in the scripted
driver, immediately in whatsapp-web.js). Only messages whose HTTP exchange was open or whose answer
awaited the group commit at the instant of the crash are exposed: about rate x 60 ms per number at
full load (~5 at 80 msg/s). Rows claimed ahead but not yet sent (up to two batches per tenant) also
become "unknown" after a crash; having never reached the provider, they get no confirmation and are
sent once, after the reconcile wait. The same rules apply to a send that timed out (GraphAPITimeout /
bridge timeout): "unknown", never blindly retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane import events as event_types
from control_plane.db import messages as messages_db
from control_plane.db import outbox as outbox_db
from control_plane.db import tenants as tenants_db
from control_plane.db import whatsapp_config as config_db
from control_plane.db.engine import utcnow
from control_plane.db.metadata import HEX_ID_RE as _OUR_ID
from control_plane.messaging import routing
from control_plane.messaging.governor import Governor, sleep_until
from control_plane.messaging.web_ingest import WebIngest
from control_plane.providers.cloud_api import (
    CloudAPIClient,
    CloudCredentials,
    GraphAPIError,
    GraphAPIUnavailable,
)
from control_plane.providers.graph_errors import ErrorScope
from control_plane.webhooks.ingest import received_event, status_event

log = logging.getLogger(__name__)

BATCH_WINDOW_S = 1.0  # a claim takes what the governor can send in this long
# Claim the next batch this long before the current one's last slot: a claim is several round trips
# that wait for a busy event loop each (100-800 ms under load); a schedule that runs dry loses that.
LOOKAHEAD_S = 1.0
RECORD_BACKLOG_MAX = 1000  # outcomes sent but not yet committed, per node, before claiming pauses
# A busy recorder commits at most this often (a lone outcome after a quiet spell goes at once): every
# commit costs a few round trips whatever its size, and at thousands of sends a second back-to-back
# commits of a dozen rows each spent more CPU on those than on the rows.
RECORD_MIN_INTERVAL_S = 0.03
CONTEXT_TTL_S = 5.0  # a tenant's config is re-read this often (and at once after a settings change)


@dataclass
class TenantContext:
    roads: routing.Roads
    creds: CloudCredentials | None
    loaded_at: float
    active: bool = True


@dataclass
class _Work:
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)


class Recorder:
    """One writer for every outcome and every Web ingest item of this node (group commit)."""

    def __init__(
        self, dispatcher: Dispatcher, *, max_batch: int = 500, min_interval_s: float = RECORD_MIN_INTERVAL_S
    ) -> None:
        self._d = dispatcher
        self._min_interval_s = min_interval_s
        self._queue: deque[tuple[str, str, list[dict[str, Any]]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self.pending = 0  # outcomes queued, not yet committed
        self._max_batch = max_batch
        self._task: asyncio.Task | None = None
        self.committed_batches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="messaging-recorder")

    def put(self, tenant_id: str, outcomes: list[dict[str, Any]]) -> None:
        if outcomes:
            self._queue.append((tenant_id, "outcomes", outcomes))
            self.pending += len(outcomes)
            self._idle.clear()
            self._wake.set()

    async def wait_below(self, limit: int, timeout: float = 1.0) -> None:
        """Backpressure: a process that sends faster than it can record stops claiming until the
        recorder catches up (otherwise every latency grows and the whole node collapses)."""
        deadline = time.monotonic() + timeout
        while self.pending > limit and time.monotonic() < deadline:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return

    def put_ingest(
        self,
        tenant_id: str,
        *,
        messages: list[dict[str, Any]] | None = None,
        statuses: list[dict[str, Any]] | None = None,
    ) -> None:
        if messages:
            self._queue.append((tenant_id, "messages", messages))
        if statuses:
            self._queue.append((tenant_id, "statuses", statuses))
        if messages or statuses:
            self._idle.clear()
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def flush(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        delay = 0.05
        last_commit = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                wait = last_commit + self._min_interval_s - time.monotonic()
                if wait > 0 and self.pending < self._max_batch:
                    await asyncio.sleep(wait)
                last_commit = time.monotonic()
                n = 0
                batch: list[tuple[str, str, list[dict[str, Any]]]] = []
                while self._queue and n < self._max_batch:
                    item = self._queue.popleft()
                    batch.append(item)
                    n += len(item[2])
                try:
                    t0 = time.perf_counter()
                    envelopes = await self._d.store(batch)
                    self._d.timing["commits"] += 1
                    self._d.timing["commit_s"] += time.perf_counter() - t0
                    delay = 0.05
                except asyncio.CancelledError:
                    self._queue.extendleft(reversed(batch))
                    raise
                except Exception as exc:
                    log.warning(
                        "messaging recorder: batch of %d not stored (%s: %s); retrying in %.1fs",
                        n,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    self._queue.extendleft(reversed(batch))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self.committed_batches += 1
                self.pending -= sum(len(items) for _, kind, items in batch if kind == "outcomes")
                self._progress.set()
                await self._d.emit(envelopes)
            self._idle.set()


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
    ) -> None:
        self.db = db
        self.settings = settings
        self.secret_box = secret_box
        self.cloud_api = cloud_api
        self.supervisor = supervisor
        self.events = events
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:12]}"
        self.governor = Governor(
            cloud_rate_per_s=settings.cloud_rate_per_s,
            web_rate_per_s=settings.web_rate_per_s,
            cloud_headroom=settings.cloud_rate_headroom,
            pair_interval_s=settings.cloud_pair_interval_s,
            pair_burst=settings.cloud_pair_burst,
            redis=redis,
        )
        self.recorder = Recorder(self)
        self.web_ingest = WebIngest(self.recorder, db=db, events=events)
        self._loops: dict[str, asyncio.Task] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, set[asyncio.Task]] = {}
        self._contexts: dict[str, TenantContext] = {}
        self._cloud_blocked: dict[str, tuple[str, float]] = {}
        self._recent_tenants: dict[str, float] = {}
        self._waiting_web: set[str] = set()  # tenants with messages waiting for their session
        self._adopting: set[tuple[str, int]] = set()  # conversations taking a canonical wa_id
        self._background: set[asyncio.Task] = set()
        self._scanner: asyncio.Task | None = None
        self._closing = False
        self.timing = {
            "claims": 0,
            "claim_s": 0.0,
            "commits": 0,
            "commit_s": 0.0,
            "late_s": 0.0,
            "sends": 0,
            "dry_s": 0.0,
            "claim_max_s": 0.0,
        }
        self.stats = {
            "sent": 0,
            "failed": 0,
            "retried": 0,
            "deferred": 0,
            "unknown": 0,
            "recovered": 0,
            "requeued_unknown": 0,
        }

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.recorder.start()
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
            done, pending = await asyncio.wait(inflight, timeout=grace_s)
            for task in pending:
                task.cancel()  # left "sending": the lease and reconciliation settle them
            await asyncio.gather(*pending, return_exceptions=True)
        await self.web_ingest.flush(timeout=grace_s)  # phone-typed messages received so far
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace_s)
        await self.recorder.flush(timeout=grace_s)
        await self.recorder.stop()
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
        now = time.monotonic()
        ctx = self._contexts.get(tenant_id)
        if ctx is None or fresh or now - ctx.loaded_at > CONTEXT_TTL_S:
            async with self.db.connect() as conn:
                cfg = await config_db.get_whatsapp_config(conn, tenant_id)
                ms = await outbox_db.get_settings(conn, tenant_id)
                tenant = await tenants_db.get_tenant(conn, tenant_id)
            creds = None
            api_type = cfg["api_type"] if cfg else "web"
            cloud_configured = bool(
                cfg
                and api_type in ("business_api", "both")
                and cfg["phone_number_id"]
                and cfg["access_token_enc"]
                and cfg["is_active"]
            )
            if cloud_configured:
                try:
                    token = self.secret_box.decrypt(cfg["access_token_enc"])
                    creds = CloudCredentials(
                        phone_number_id=cfg["phone_number_id"],
                        waba_id=cfg["waba_id"] or "",
                        access_token=token,
                        api_version=cfg["api_version"] or self.settings.graph_api_version,
                    )
                except Exception:
                    log.error("cannot decrypt the Business API token tenant=%s", tenant_id)
                    cloud_configured = False
            fallback = None
            if ms and ms.get("fallback_template_name"):
                fallback = {
                    "name": ms["fallback_template_name"],
                    "language": ms["fallback_template_language"],
                    "body_param": bool(ms["fallback_template_body_param"]),
                }
            roads = routing.Roads(
                policy=cfg["fallback_policy"] if cfg else "web_only",
                web_configured=api_type in ("web", "both") and (cfg is None or cfg["is_active"]),
                cloud_configured=cloud_configured,
                fallback_template=fallback,
            )
            ctx = TenantContext(
                roads=roads, creds=creds, loaded_at=now, active=bool(tenant and tenant["is_active"])
            )
            self._contexts[tenant_id] = ctx
        blocked = self._cloud_blocked.get(tenant_id)
        if blocked and blocked[1] < now:
            self._cloud_blocked.pop(tenant_id, None)
            blocked = None
        web_ready = bool(self.supervisor is not None and self.supervisor.is_ready(tenant_id))
        state = "ready" if web_ready else "not running"
        state_fn = getattr(self.supervisor, "state", None)
        if not web_ready and callable(state_fn):
            st = state_fn(tenant_id)
            state = f"not ready (state {getattr(st, 'value', st) or 'stopped'})"
        ctx.roads = routing.Roads(
            **{
                **ctx.roads.__dict__,
                "web_ready": web_ready,
                "web_state": state,
                "cloud_blocked": blocked[0] if blocked else None,
            }
        )
        return ctx

    def invalidate(self, tenant_id: str) -> None:
        """The tenant's config changed."""
        self._contexts.pop(tenant_id, None)
        self._cloud_blocked.pop(tenant_id, None)

    def _claim_size(self, ctx: TenantContext) -> int:
        roads = ctx.roads
        web_primary = roads.web_configured and (
            roads.policy == "web_only"
            or (roads.policy == "web_first" and roads.web_ready)
            or not roads.cloud_configured
        )
        rate = self.settings.web_rate_per_s if web_primary else self.settings.cloud_rate_per_s
        return max(1, min(self.settings.messaging_batch_max, math.ceil(rate * BATCH_WINDOW_S)))

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
                    limit = self._claim_size(ctx)
                    t0 = time.perf_counter()
                    async with self.db.begin() as conn:
                        rows = await outbox_db.claim(conn, tenant_id, self.node_id, limit=limit)
                    self.timing["claims"] += 1
                    took = time.perf_counter() - t0
                    self.timing["claim_s"] += took
                    self.timing["claim_max_s"] = max(self.timing["claim_max_s"], took)
                    errors_in_row = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors_in_row += 1
                    log.warning("dispatch claim failed tenant=%s: %s: %s", tenant_id, type(exc).__name__, exc)
                    await asyncio.sleep(min(5.0, 0.2 * 2**errors_in_row))
                    continue
                if not rows:
                    async with self.db.connect() as conn:
                        nxt = await outbox_db.next_due_at(conn, tenant_id)
                    if wake.is_set():
                        continue
                    if nxt is None and not inflight:
                        return  # idle: the scanner or notify() starts a new loop when work arrives
                    wait = self.settings.messaging_poll_s
                    if nxt is not None:
                        wait = min(wait, max(0.01, (nxt - utcnow()).total_seconds()))
                    try:
                        await asyncio.wait_for(wake.wait(), wait)
                    except TimeoutError:
                        pass
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

    async def _dispatch_batch(
        self, tenant_id: str, ctx: TenantContext, rows: list[dict[str, Any]], inflight: set[asyncio.Task]
    ) -> float:
        """Route a claimed batch and schedule its sends; returns the loop time of its last slot."""
        now = utcnow()
        loop = asyncio.get_running_loop()
        immediate: list[dict[str, Any]] = []
        web_rows: list[tuple[dict[str, Any], routing.Decision]] = []
        cloud_rows: list[tuple[dict[str, Any], routing.Decision]] = []
        for row in rows:
            if not ctx.active:  # held, not failed: the tenant may be reactivated
                immediate.append(
                    {
                        "message_id": row["message_id"],
                        "kind": "defer",
                        "provider": None,
                        "next_attempt_at": now + dt.timedelta(seconds=30),
                        "reason": "held: the tenant is deactivated",
                    }
                )
                continue
            decision = routing.decide(
                kind=row["type"],
                requested=row["requested_provider"],
                roads=ctx.roads,
                last_inbound_at=row["last_inbound_at"],
                now=now,
                web_capable=_web_capable(row),
            )
            if decision.action == "fail":
                immediate.append(
                    _failed(row, decision.provider, decision.error_code, decision.reason, decision.reason)
                )
            elif decision.action == "wait":
                if decision.provider == routing.WEB:
                    self._waiting_web.add(tenant_id)
                immediate.append(
                    self._retry(
                        row,
                        decision.provider,
                        decision.error_code or "not_available",
                        decision.reason,
                        decision.reason,
                    )
                )
            elif decision.provider == routing.WEB:
                web_rows.append((row, decision))
            else:
                cloud_rows.append((row, decision))
        last = loop.time()
        chains: dict[tuple[str, str], list[tuple[dict[str, Any], routing.Decision, float]]] = {}
        if cloud_rows and ctx.creds is not None:
            number = f"cloud:{ctx.creds.phone_number_id}"
            delays = await self.governor.pair_delays(number, [r["wa_id"] for r, _ in cloud_rows])
            go = []
            for (row, decision), delay in zip(cloud_rows, delays):
                if delay > 0:
                    immediate.append(
                        {
                            "message_id": row["message_id"],
                            "kind": "defer",
                            "provider": routing.CLOUD,
                            "next_attempt_at": now + dt.timedelta(seconds=delay),
                            "reason": f"paced: pair limit to {row['wa_id']} ({delay:.1f} s)",
                        }
                    )
                else:
                    go.append((row, decision))
            idle = self.governor.idle_s(number)
            if idle is not None and go:
                self.timing["dry_s"] += idle
            slots = await self.governor.reserve(number, [self.governor.cloud_interval()] * len(go))
            base = loop.time()
            for (row, decision), delay in zip(go, slots):
                chains.setdefault((routing.CLOUD, row["wa_id"]), []).append((row, decision, base + delay))
                last = max(last, base + delay)
        if web_rows:
            slots = await self.governor.reserve(
                f"web:{tenant_id}", self.governor.web_intervals(len(web_rows))
            )
            base = loop.time()
            for (row, decision), delay in zip(web_rows, slots):
                chains.setdefault((routing.WEB, row["wa_id"]), []).append((row, decision, base + delay))
                last = max(last, base + delay)
        self._count(immediate)
        self.recorder.put(tenant_id, immediate)
        for chain in chains.values():
            task = asyncio.create_task(self._run_chain(tenant_id, ctx, chain))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        return last

    async def _run_chain(
        self, tenant_id: str, ctx: TenantContext, chain: list[tuple[dict[str, Any], routing.Decision, float]]
    ) -> None:
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
                outcome = self._unknown(row, decision.provider, decision.reason, f"internal error: {exc!r}")
            self._count([outcome])
            self.recorder.put(tenant_id, [outcome])

    def _count(self, outcomes: list[dict[str, Any]]) -> None:
        for o in outcomes:
            key = {
                "sent": "sent",
                "failed": "failed",
                "retry": "retried",
                "defer": "deferred",
                "unknown": "unknown",
            }[o["kind"]]
            self.stats[key] += 1

    # ------------------------------------------------------------------------------ outcomes

    def _retry(
        self,
        row: dict[str, Any],
        provider: str | None,
        code: Any,
        message: str,
        reason: str,
        *,
        min_delay: float = 0.0,
    ) -> dict[str, Any]:
        s = self.settings
        if row["attempts"] >= s.messaging_max_attempts:
            return _failed(
                row, provider, code, f"gave up after {row['attempts']} attempts: {message}", reason
            )
        backoff = min(s.messaging_retry_cap_s, s.messaging_retry_base_s * 2 ** (row["attempts"] - 1))
        delay = max(min_delay, backoff * random.uniform(0.8, 1.2))
        return {
            "message_id": row["message_id"],
            "kind": "retry",
            "provider": provider,
            "next_attempt_at": utcnow() + dt.timedelta(seconds=delay),
            "error_code": code,
            "error_message": message,
            "reason": f"retry in {delay:.1f} s: {message}"[:255],
        }

    def _unknown(
        self, row: dict[str, Any], provider: str | None, reason: str, message: str
    ) -> dict[str, Any]:
        return {
            "message_id": row["message_id"],
            "kind": "unknown",
            "provider": provider,
            "reason": reason,
            "error_message": message,
            "next_attempt_at": utcnow() + dt.timedelta(seconds=self.settings.messaging_reconcile_s),
        }

    # --------------------------------------------------------------------------------- sending

    async def _send_one(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        if decision.provider == routing.WEB:
            return await self._send_web(tenant_id, ctx, row, decision)
        return await self._send_cloud(tenant_id, ctx, row, decision)

    async def _send_web(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        from control_plane import supervisor as sup

        args = await self._bridge_args(tenant_id, row)
        try:
            result = await self.supervisor.send(tenant_id, args)
        except sup.SessionNotReady as exc:
            fallback = routing.fallback_on_web_down(
                ctx.roads, row["requested_provider"], row["type"], row["last_inbound_at"], utcnow()
            )
            if fallback is not None and ctx.creds is not None:
                number = f"cloud:{ctx.creds.phone_number_id}"
                (delay,) = await self.governor.reserve(number, [self.governor.cloud_interval()])
                await asyncio.sleep(delay)
                return await self._send_cloud(tenant_id, ctx, row, fallback)
            self._waiting_web.add(tenant_id)
            return self._retry(row, routing.WEB, "web_not_ready", str(exc), decision.reason)
        except sup.BridgeBadRequest as exc:
            return _failed(row, routing.WEB, f"bridge_{exc.bridge_code}", exc.bridge_message, decision.reason)
        except sup.BridgeCommandError as exc:
            if exc.bridge_code in ("not_on_whatsapp", "not_supported"):
                return _failed(
                    row, routing.WEB, f"bridge_{exc.bridge_code}", exc.bridge_message, decision.reason
                )
            return self._retry(
                row, routing.WEB, f"bridge_{exc.bridge_code}", exc.bridge_message, decision.reason
            )
        except sup.BridgeUnavailable as exc:
            if exc.ambiguous:
                return self._unknown(row, routing.WEB, decision.reason, f"bridge gave no answer: {exc}")
            return self._retry(row, routing.WEB, "bridge_unavailable", str(exc), decision.reason)
        except sup.SupervisorClosed as exc:
            return self._retry(row, routing.WEB, "shutting_down", str(exc), decision.reason)
        pmid = str(result.get("id") or "")
        if not pmid:
            return self._unknown(
                row, routing.WEB, decision.reason, "the bridge answered without a message id"
            )
        return {
            "message_id": row["message_id"],
            "kind": "sent",
            "provider": routing.WEB,
            "provider_message_id": pmid,
            "conversation_id": row["conversation_id"],
            "wa_id": row["wa_id"],
            "reason": decision.reason,
            "at": utcnow(),
        }

    async def _send_cloud(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        creds = ctx.creds
        if creds is None or self.cloud_api is None:
            return _failed(
                row, routing.CLOUD, "no_route", "the Business API is not configured", decision.reason
            )
        try:
            payload = await self._cloud_payload(tenant_id, ctx, row, decision)
            win = await self.governor.window_acquire(
                f"cloud:{creds.phone_number_id}", max(1, math.floor(self.settings.cloud_rate_per_s))
            )
            try:
                result = await self.cloud_api.send_raw(creds, payload)
            finally:
                self.governor.window_release(win)
        except GraphAPIUnavailable as exc:
            if exc.maybe_sent:
                return self._unknown(
                    row, routing.CLOUD, decision.reason, f"no answer from the Graph API: {exc}"
                )
            return self._retry(row, routing.CLOUD, "graph_unavailable", str(exc), decision.reason)
        except GraphAPIError as exc:
            return await self._cloud_error(tenant_id, ctx, row, decision, exc)
        if result.wa_id and messages_db.canonical_wa_id(result.wa_id) != row["wa_id"]:
            self._adopt_canonical(tenant_id, row["conversation_id"], row["wa_id"], result.wa_id)
        return {
            "message_id": row["message_id"],
            "kind": "sent",
            "provider": routing.CLOUD,
            "provider_message_id": result.wamid,
            "conversation_id": row["conversation_id"],
            "wa_id": row["wa_id"],
            "reason": decision.reason,
            "at": utcnow(),
        }

    def _adopt_canonical(self, tenant_id: str, conversation_id: int, old: str, new: str) -> None:
        """Best effort, off the send path: the conversation takes the contact's canonical wa_id."""
        key = (tenant_id, conversation_id)
        if key in self._adopting:
            return
        self._adopting.add(key)

        async def adopt() -> None:
            try:
                async with self.db.begin() as conn:
                    changed = await messages_db.adopt_canonical_wa_id(
                        conn, tenant_id, conversation_id, old, new
                    )
                if changed:
                    log.info(
                        "conversation %s takes the canonical wa_id %s (sent to %s) tenant=%s",
                        conversation_id,
                        new,
                        old,
                        tenant_id,
                    )
            except IntegrityError:
                log.warning(
                    "conversation %s: another conversation already has the canonical wa_id %s "
                    "(sent to %s); both kept tenant=%s",
                    conversation_id,
                    new,
                    old,
                    tenant_id,
                )
            except Exception:
                log.exception(
                    "conversation %s: cannot take the canonical wa_id tenant=%s", conversation_id, tenant_id
                )
            finally:
                self._adopting.discard(key)

        task = asyncio.create_task(adopt(), name=f"adopt-wa-id-{conversation_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cloud_error(
        self,
        tenant_id: str,
        ctx: TenantContext,
        row: dict[str, Any],
        decision: routing.Decision,
        exc: GraphAPIError,
    ) -> dict[str, Any]:
        code = str(exc.code) if exc.code is not None else f"http_{exc.http_status}"
        text = exc.details or exc.message
        number = f"cloud:{ctx.creds.phone_number_id}" if ctx.creds else "cloud:?"
        if exc.code == 130429 or (exc.code is None and exc.http_status == 429):
            await self.governor.penalize(number, exc.retry_after_s or 1.0)
        elif exc.code == 131056:
            await self.governor.penalize_pair(number, row["wa_id"], exc.retry_after_s or 6.0)
        elif exc.code in (4, 80007):
            await self.governor.penalize(number, exc.retry_after_s or 60.0)
        if exc.scope in (ErrorScope.AUTH, ErrorScope.PERMISSION):
            # Stop using the road for a while: following messages fall back when the policy allows.
            self._cloud_blocked[tenant_id] = (f"token refused ({code})", time.monotonic() + 60.0)
            log.warning("Business API token refused tenant=%s code=%s", tenant_id, code)
        if exc.retryable:
            return self._retry(
                row, routing.CLOUD, code, text, decision.reason, min_delay=exc.retry_after_s or 0.0
            )
        return _failed(row, routing.CLOUD, code, text, decision.reason)

    async def _resolve_reference(self, tenant_id: str, ref: str, provider: str) -> str:
        """``reply_to``/``reaction.message_id`` may name our message id: the provider wants its own."""
        if not _OUR_ID.match(ref):
            return ref
        async with self.db.connect() as conn:
            msg = await messages_db.get_message(conn, tenant_id, ref)
        if msg and msg["provider_message_id"] and msg["provider"] == provider:
            return msg["provider_message_id"]
        return ref

    async def _cloud_payload(
        self, tenant_id: str, ctx: TenantContext, row: dict[str, Any], decision: routing.Decision
    ) -> dict[str, Any]:
        """The Graph API request for a stored (provider-neutral) message."""
        content = row["content"] or {}
        kind = row["type"]
        if decision.use_fallback_template:
            tpl = ctx.roads.fallback_template or {}
            part: dict[str, Any] = {
                "name": tpl["name"],
                "language": {"code": tpl["language"], "policy": "deterministic"},
            }
            if tpl.get("body_param"):
                text = _plain_text(kind, content)[:1024] or "-"
                part["components"] = [{"type": "body", "parameters": [{"type": "text", "text": text}]}]
            payload: dict[str, Any] = {"type": "template", "template": part}
        else:
            if kind == "text":
                part = {"body": content["text"], "preview_url": bool(content.get("preview_url"))}
            elif kind in _MEDIA:
                part = await self._cloud_media(ctx, kind, content)
            elif kind == "template":
                part = {
                    "name": content["name"],
                    "language": {"code": content["language"], "policy": "deterministic"},
                }
                if content.get("components"):
                    part["components"] = content["components"]
            elif kind == "reaction":
                part = {
                    "message_id": await self._resolve_reference(
                        tenant_id, content["message_id"], routing.CLOUD
                    ),
                    "emoji": content["emoji"],
                }
            else:  # location, interactive: the stored object is the Cloud API's
                part = {k: v for k, v in content.items() if k != "context"}
            payload = {"type": kind, kind: part}
        context = content.get("context") or {}
        if context.get("id") and not decision.use_fallback_template:
            payload["context"] = {
                "message_id": await self._resolve_reference(tenant_id, context["id"], routing.CLOUD)
            }
        payload["to"] = row["wa_id"]
        payload["biz_opaque_callback_data"] = row["message_id"]
        return payload

    async def _cloud_media(self, ctx: TenantContext, kind: str, content: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if content.get("base64"):
            import base64

            data = base64.b64decode(content["base64"])
            out["id"] = await self.cloud_api.upload_media(
                ctx.creds,
                data,
                content.get("mime_type") or "application/octet-stream",
                content.get("filename") or f"{kind}",
            )
        elif content.get("media_id"):
            out["id"] = content["media_id"]
        else:
            out["link"] = content.get("link")
        if content.get("caption") is not None and kind in ("image", "video", "document"):
            out["caption"] = content["caption"]
        if content.get("filename") and kind == "document":
            out["filename"] = content["filename"]
        return out

    async def _bridge_args(self, tenant_id: str, row: dict[str, Any]) -> dict[str, Any]:
        """The bridge's ``send`` arguments for a stored (provider-neutral) message."""
        content = row["content"] or {}
        kind = row["type"]
        args: dict[str, Any] = {"to": row["wa_id"]}
        if kind == "text":
            args.update(type="text", text=content["text"])
        elif kind == "location":
            args.update(
                type="location",
                location={
                    "latitude": content["latitude"],
                    "longitude": content["longitude"],
                    "description": content.get("name") or content.get("address"),
                },
            )
        else:
            media: dict[str, Any] = {}
            if content.get("base64"):
                media["base64"] = content["base64"]
            else:
                media["url"] = content.get("link")
            if content.get("mime_type"):
                media["mimetype"] = content["mime_type"]
            if content.get("filename"):
                media["filename"] = content["filename"]
            args.update(type="media", media=media)
            if content.get("caption") is not None:
                args["caption"] = content["caption"]
        context = content.get("context") or {}
        if context.get("id"):
            args["reply_to"] = await self._resolve_reference(tenant_id, context["id"], routing.WEB)
        return args

    # ------------------------------------------------------------------------------ recording

    async def store(self, batch: list[tuple[str, str, list[dict[str, Any]]]]) -> list[Any]:
        """One transaction for a recorder batch; returns the event envelopes to emit after commit."""
        per_tenant: dict[str, _Work] = {}
        for tenant_id, kind, items in batch:
            getattr(per_tenant.setdefault(tenant_id, _Work()), kind).extend(items)
        new_events: list[tuple[str, str, dict[str, Any]]] = []
        async with self.db.begin() as conn:
            outcomes = {t: work.outcomes for t, work in per_tenant.items() if work.outcomes}
            if outcomes:
                new_events += await self.record_many(conn, outcomes)
            for tenant_id in sorted(per_tenant):
                work = per_tenant[tenant_id]
                if work.messages:
                    rows = await messages_db.record_inbound_messages(conn, tenant_id, work.messages)
                    to = {m["provider_message_id"]: m.get("to") for m in work.messages}
                    new_events += [
                        (
                            tenant_id,
                            event_types.MESSAGE_RECEIVED,
                            received_event(r, to.get(r["provider_message_id"])),
                        )
                        for r in rows
                    ]
                if work.statuses:
                    changes = await messages_db.apply_status_updates(conn, tenant_id, work.statuses)
                    new_events += _status_events(tenant_id, changes)
            return await self._append(conn, new_events)

    async def record(self, conn: Any, tenant_id: str, outcomes: list[dict[str, Any]]) -> list[tuple]:
        """:meth:`record_many` for one tenant."""
        return await self.record_many(conn, {tenant_id: outcomes})

    async def record_many(self, conn: Any, by_tenant: dict[str, list[dict[str, Any]]]) -> list[tuple]:
        """Record outcomes (of any tenants) inside ``conn``'s transaction; returns (tenant, type,
        data) events. Sends of every tenant are recorded together (one round trip on MariaDB).

        ``message.sent`` for each send the provider accepted; ``message.status`` + ``message.failed``
        for each failure (the webhook's shapes); later statuses come from webhooks and Web acks."""
        now = utcnow()
        tenants = sorted(by_tenant)
        raced = await outbox_db.record_sent(
            conn, [(t, o) for t in tenants for o in by_tenant[t] if o["kind"] == "sent"], now=now
        )
        events: list[tuple[str, str, dict[str, Any]]] = []
        for tenant_id in tenants:
            outcomes = by_tenant[tenant_id]
            others = [o for o in outcomes if o["kind"] != "sent"]
            if others:
                await outbox_db.record_outcomes(conn, tenant_id, others, now=now)
            for o in outcomes:
                if o["kind"] == "sent":
                    data = _status_data(o, "sent", o.get("at") or now, None, None)
                    data["route_reason"] = o.get("reason")
                    events.append((tenant_id, event_types.MESSAGE_SENT, data))
                    if (tenant_id, o["provider_message_id"]) in raced:  # a status beat our record: apply it
                        after = await messages_db.apply_recorded_statuses(conn, tenant_id, o["message_id"])
                        if after and after["status"] != "sent":
                            events.append(
                                (
                                    tenant_id,
                                    event_types.MESSAGE_STATUS,
                                    _status_data(
                                        {**o, "provider_message_id": after["provider_message_id"]},
                                        after["status"],
                                        after["updated_at"],
                                        after.get("error_code"),
                                        after.get("error_message"),
                                    ),
                                )
                            )
                elif o["kind"] == "failed":
                    data = _status_data(
                        {**o, "provider_message_id": None},
                        "failed",
                        now,
                        o.get("error_code"),
                        o.get("error_message"),
                    )
                    data["route_reason"] = o.get("reason")
                    events.append((tenant_id, event_types.MESSAGE_STATUS, data))
                    events.append((tenant_id, event_types.MESSAGE_FAILED, data))
        return events

    async def _append(self, conn: Any, new_events: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        if not new_events or self.events is None:
            return []
        append_many = getattr(self.events, "append_many", None)
        if append_many is not None:
            return list(await append_many(conn, new_events))
        return [await self.events.append(conn, t, type_, data) for t, type_, data in new_events]

    async def emit(self, envelopes: list[Any]) -> None:
        if envelopes and self.events is not None:
            try:
                await self.events.emit(envelopes)
            except Exception:
                log.exception("messaging events stored but not emitted")

    # ---------------------------------------------------------------------------- recovery

    async def recover(self) -> dict[str, int]:
        """Settle rows whose outcome is unknown (crash or timeout mid-send); see the module docstring."""
        s = self.settings
        now = utcnow()
        result = {"expired": 0, "recovered": 0, "requeued": 0}
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
        envelopes: list[Any] = []
        async with self.db.begin() as conn:
            rows = await outbox_db.list_unknown(conn)
            events: list[tuple] = []
            by_tenant: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
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
                    by_tenant.setdefault(tenant_id, []).append(
                        {
                            "message_id": row["message_id"],
                            "kind": "sent",
                            "provider": provider,
                            "provider_message_id": fact["provider_message_id"],
                            "conversation_id": row["conversation_id"],
                            "wa_id": row["wa_id"],
                            "reason": f"{row['route_reason'] or 'sent'}; recovered after an unknown outcome: "
                            f"the provider confirmed {fact['provider_message_id'][:40]}",
                        }
                    )
                elif row["next_attempt_at"] <= now:
                    await outbox_db.requeue_unknown(
                        conn,
                        tenant_id,
                        row["message_id"],
                        f"outcome unknown and no provider confirmation within {s.messaging_reconcile_s:.0f} s: "
                        "sending again",
                    )
                    result["requeued"] += 1
                    self.notify(tenant_id)
            for tenant_id, outcomes in by_tenant.items():
                events += await self.record(conn, tenant_id, outcomes)
                result["recovered"] += len(outcomes)
            envelopes = await self._append(conn, events)
        await self.emit(envelopes)
        self.stats["recovered"] += result["recovered"]
        self.stats["requeued_unknown"] += result["requeued"]
        if result["recovered"] or result["requeued"]:
            log.warning("messaging recovery: %s", result)
        return result

    async def _sweep_orphans(self) -> None:
        """Status facts that raced their send's record (a webhook faster than our commit)."""
        horizon = time.monotonic() - 600
        for tenant_id in [t for t, at in self._recent_tenants.items() if at >= horizon]:
            async with self.db.begin() as conn:
                ids = await outbox_db.orphan_status_message_ids(
                    conn, tenant_id, utcnow() - dt.timedelta(minutes=10)
                )
                events = []
                for message_id in ids:
                    before = await messages_db.get_message(conn, tenant_id, message_id)
                    after = await messages_db.apply_recorded_statuses(conn, tenant_id, message_id)
                    if before and after and after["status"] != before["status"]:
                        conv = await messages_db.get_conversation(conn, tenant_id, after["conversation_id"])
                        after["wa_id"] = conv["wa_id"] if conv else None
                        events.append(
                            (
                                tenant_id,
                                event_types.MESSAGE_STATUS,
                                _status_data(
                                    after,
                                    after["status"],
                                    after["updated_at"],
                                    after.get("error_code"),
                                    after.get("error_message"),
                                ),
                            )
                        )
                envelopes = await self._append(conn, events)
            await self.emit(envelopes)
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

_MEDIA = ("image", "video", "audio", "document", "sticker")


def _web_capable(row: dict[str, Any]) -> bool:
    """Media given by a Cloud API media id can only go by the Cloud API."""
    return not (row["type"] in _MEDIA and (row.get("content") or {}).get("media_id"))


def _plain_text(kind: str, content: dict[str, Any]) -> str:
    if kind == "text":
        return str(content.get("text") or "")
    return str(content.get("caption") or "")


def _failed(
    row: dict[str, Any], provider: str | None, code: Any, message: str, reason: str
) -> dict[str, Any]:
    return {
        "message_id": row["message_id"],
        "kind": "failed",
        "provider": provider,
        "error_code": code,
        "error_message": message,
        "reason": reason,
        "conversation_id": row.get("conversation_id"),
        "wa_id": row.get("wa_id"),
    }


def _status_data(
    row: dict[str, Any], status: str, at: dt.datetime | None, code: Any, message: str | None
) -> dict[str, Any]:
    """The ``message.status`` data shape the webhook receiver publishes (docs/EVENTS.md). ``row`` is a
    message row (``id``) or an outcome (``message_id``), with ``conversation_id`` and ``wa_id``."""
    return status_event(
        {
            "message_id": row.get("message_id") or row.get("id"),
            "conversation_id": row.get("conversation_id"),
            "provider": row.get("provider"),
            "provider_message_id": row.get("provider_message_id"),
            "status": status,
            "occurred_at": at,
            "recipient_id": row.get("wa_id"),
            "error_code": code,
            "error_message": message,
        }
    )


def _status_events(tenant_id: str, changes: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for change in changes:
        if not change["changed"]:
            continue
        data = status_event(change)
        out.append((tenant_id, event_types.MESSAGE_STATUS, data))
        if change["status"] == "failed":
            out.append((tenant_id, event_types.MESSAGE_FAILED, data))
    return out
