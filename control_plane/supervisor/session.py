"""One tenant's supervised session: the runner task that owns its bridge child.

The runner is the only code that spawns, signals or waits for the child. Everything else (API
commands, the watchdog, the memory cap, the QR policy) asks it to act through ``request()`` and a
wake-up event, so two actions never race on one process. ``_change()`` is the one mutation point of
the session's state: it checks the transition table, then hands a snapshot to its host (the
supervisor, seen through ``host.SessionHost``), which persists it and publishes ``session.state``.

Exit classification (``_after_exit``), after Supervisor's ``finish()``:
    logout asked                      -> LOGGED_OUT (profile wiped), runner ends
    stop asked / desired stopped      -> STOPPED, runner ends (STARTING if a start came meanwhile)
    QR never scanned                  -> FAILED qr_expired, runner ends
    restart asked                     -> STARTING at once, breaker reset
    phone unlinked the device (5)     -> LOGGED_OUT phone_logout, then STARTING (a fresh QR)
    anything else (crash, kill by the watchdog or the memory cap)
        -> crash-loop breaker tripped ? FAILED crash_loop (runner ends, waits for a person)
                                      : BACKOFF <reason>, sleep with jitter, STARTING

Time comes from the ``clock`` (monotonic) and ``wall_clock`` given at construction, so the watchdog
and the breaker are tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from control_plane.bridge import protocol
from control_plane.bridge.protocol import BridgeEvent
from control_plane.events import SESSION_QR, format_ts
from control_plane.supervisor import causes, paths, policy
from control_plane.supervisor.bridge_run import BRIDGE_STATES, BridgeRun
from control_plane.supervisor.host import SessionHost
from control_plane.supervisor.mailbox import Action, Mailbox, Outcome
from control_plane.supervisor.process import BridgeProcess, bridge_env, cleanup_profile, describe_exit
from control_plane.supervisor.states import (
    InvalidTransition,
    SessionState,
    SessionStateMachine,
    Transition,
    can_transition,
)

log = logging.getLogger(__name__)
S = SessionState
# A running bridge whose desired state turned to stopped without a stop request reaching the runner
# (a lost wake-up) is stopped within this long: the desired state is the truth.
RECHECK_DESIRED_S = 1.0


class TenantSession:
    """Actual state, desired state and the runner of one tenant's bridge."""

    def __init__(
        self,
        host: SessionHost,
        tenant_id: str,
        *,
        sandbox: bool,
        desired_running: bool,
        row: dict[str, Any] | None = None,
        clock: policy.Clock = time.monotonic,
        wall_clock: policy.Clock = time.time,
    ) -> None:
        self.host = host
        self.tenant_id = tenant_id
        self.sandbox = sandbox
        settings = host.settings
        self.driver = settings.bridge_driver or ("scripted" if sandbox else "wwebjs")
        self.desired_running = desired_running
        self._clock = clock
        self._wall_clock = wall_clock
        self.limits = policy.WatchdogLimits.of(settings)
        state, reason, why = S.STOPPED, None, {}
        if row and row.get("state") in (S.FAILED.value, S.LOGGED_OUT.value):
            state, reason = S(row["state"]), row.get("reason")
            why = {"detail": row.get("detail"), "error": row.get("error")}
        self.machine = SessionStateMachine(state, reason, row.get("since") if row else None, **why)
        self.restarts: int = (row or {}).get("restarts") or 0
        self.last_exit_code: int | None = (row or {}).get("last_exit_code")
        self.own_number: str | None = (row or {}).get("own_number")
        self.breaker = policy.CrashLoopBreaker(settings.crash_loop_max, settings.crash_loop_window_s, clock)
        self.lock = asyncio.Lock()  # serializes API commands on this tenant
        self.runner: asyncio.Task | None = None
        self.proc: BridgeProcess | None = None
        self._gen = 0
        self._mailbox = Mailbox()
        self._acting = False
        self._timer: asyncio.TimerHandle | None = None  # only when a deadline falls between two sweeps
        self.run_facts = BridgeRun(tenant_id, clock())

    # -- views --
    @property
    def state(self) -> SessionState:
        return self.machine.state

    @property
    def is_ready(self) -> bool:
        return self.state is S.READY and self.proc is not None and not self.proc.exited

    @property
    def running(self) -> bool:
        return self.runner is not None and not self.runner.done()

    @property
    def acting(self) -> bool:
        """The runner is acting on a request (stopping, killing): leave the bridge alone meanwhile."""
        return self._acting

    @property
    def folder(self) -> Path:
        return paths.tenant_dir(self.host.settings.sessions_dir, self.tenant_id)

    def profile_dirs(self) -> list[Path]:
        dirs = [paths.profile_dir(self.folder)]
        udd = self.run_facts.user_data_dir
        if udd is not None and udd not in dirs:
            dirs.append(udd)
        return dirs

    def qr(self) -> dict[str, Any] | None:
        if self.state is not S.QR:
            return None
        shown = self.run_facts.qr_showing(self._wall_clock() * 1000)
        return shown.public() if shown is not None else None

    def snapshot(self) -> dict[str, Any]:
        """The persisted columns of the actual state."""
        proc = self.proc
        return {
            "state": self.state.value,
            "reason": self.machine.reason,
            "detail": self.machine.detail,
            "error": self.machine.error,
            "since": self.machine.since,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "pid": proc.pid if proc is not None and not proc.exited else None,
            "own_number": self.own_number,
        }

    # -- the one mutation point --
    def _change(
        self, new: SessionState, reason: str | None = None, *, error: str | None = None, **extra: Any
    ) -> Transition | None:
        """``error``: the technical text behind ``reason``; ``detail`` is made from both (causes.py)."""
        detail = causes.explain(reason, error, cause=extra.get("cause"))
        try:
            transition = self.machine.change(new, reason, detail=detail, error=error)
        except InvalidTransition as exc:
            log.warning("ignored transition tenant=%s: %s", self.tenant_id, exc)
            return None
        log.info(
            "session %s -> %s%s tenant=%s",
            transition.previous.value,
            new.value,
            f" reason={reason}" if reason else "",
            self.tenant_id,
        )
        data = {
            "state": new.value,
            "previous": transition.previous.value,
            "reason": reason,
            "detail": detail,
            "error": error,
            "since": format_ts(transition.since),
            "restarts": self.restarts,
            "desired_state": "running" if self.desired_running else "stopped",
            **extra,
        }
        if new is S.READY:
            data["own_number"] = self.own_number
        self.host.record_state(self.tenant_id, self.snapshot(), data)
        return transition

    def mark_stopped(self, reason: str) -> None:
        """Records ``stopped`` when no runner runs (while one runs, it owns the state)."""
        if not self.running and self.state not in (S.STOPPED, S.LOGGED_OUT):
            self._change(S.STOPPED, reason)

    # -- requests from outside the runner --
    def request(self, kind: str, reason: str) -> None:
        """Asks the runner to act (it wakes up at once). A weaker request never replaces a stronger one."""
        self._mailbox.put(kind, reason)

    # -- the runner --
    async def run(self) -> None:
        try:
            while True:
                action = self._mailbox.take()
                if (
                    (action and action.kind in ("stop", "logout"))
                    or not self.desired_running
                    or self.host.closing
                ):
                    await self._finish_idle(action)
                    if not self._wanted_again():
                        return
                    continue
                if action and action.kind == "restart":
                    self.breaker.reset()
                outcome = await self._run_bridge_once()
                if not await self._after_exit(outcome):
                    return
        except asyncio.CancelledError:
            self._disarm()
            if self.proc is not None and not self.proc.exited:
                self.proc.kill_group()
            raise
        except Exception as exc:  # a supervisor bug must not leave the tenant half-alive
            log.exception("session runner failed tenant=%s", self.tenant_id)
            if self.proc is not None and not self.proc.exited:
                await self.proc.kill()
            self.proc = None
            if can_transition(self.state, S.FAILED):
                self._change(S.FAILED, "internal_error", error=type(exc).__name__)

    def _wanted_again(self) -> bool:
        """Stopped, but a start came meanwhile (commands never wait for the runner): start again."""
        if not self.desired_running or self.host.closing:
            return False
        log.info("started again: desired state is running tenant=%s", self.tenant_id)
        self.breaker.reset()
        return True

    async def _finish_idle(self, action: Action | None) -> None:
        """Ends the runner with no child alive."""
        if action and action.kind == "logout":
            await self._wipe()
            if self.state is not S.LOGGED_OUT:
                self._change(S.LOGGED_OUT, action.reason)
        elif self.state not in (S.STOPPED, S.LOGGED_OUT) and not (self.state is S.FAILED and action is None):
            self._change(S.STOPPED, action.reason if action else "stopped")

    async def _run_bridge_once(self) -> Outcome:
        folder = paths.tenant_dir(self.host.settings.sessions_dir, self.tenant_id, create=True)
        killed, removed = await cleanup_profile(self.profile_dirs())
        if killed or removed:
            log.warning(
                "freed the profile before start tenant=%s killed=%d removed=%s",
                self.tenant_id,
                killed,
                removed,
            )
        self.run_facts = BridgeRun(self.tenant_id, self._clock())
        if self.state is S.BACKOFF:  # starting again after a failure: still says which
            self._change(S.STARTING, self.machine.reason, error=self.machine.error)
        else:
            self._change(S.STARTING)
        self._gen += 1
        proc = await self._spawn(folder, self._gen)
        if proc is None:
            self.run_facts.fatal_code = "spawn_failed"
            return Outcome(-255, None, "spawn_failed", self.run_facts.fatal_message)
        self.proc = proc
        self.run_facts.last_seen = self._clock()
        log.info("bridge spawned pid=%d driver=%s tenant=%s", proc.pid, self.driver, self.tenant_id)
        self.host.record_state(self.tenant_id, self.snapshot(), None)  # persist the pid
        self._arm()
        try:
            cause = await self._supervise(proc)
        finally:
            self._disarm()
        code = await proc.wait()
        assert code is not None
        await proc.close()
        self.proc = None
        await cleanup_profile(self.profile_dirs())
        return Outcome(code, cause, self.run_facts.fatal_code, self.run_facts.why_it_ended())

    async def _spawn(self, folder: Path, gen: int) -> BridgeProcess | None:
        """Starts this run's bridge (generation ``gen``); None when it cannot be spawned."""
        try:
            return await BridgeProcess.spawn(
                self.host.bridge_argv(self.tenant_id, folder, self.driver),
                cwd=folder,
                env=bridge_env(
                    tmpdir=folder / paths.TMP_DIR_NAME, chrome_path=self.host.settings.chrome_path
                ),
                on_event=lambda ev: self._on_event(gen, ev),
                on_stderr=self.run_facts.on_stderr,
                on_heartbeat=lambda: self._on_heartbeat(gen),
                log_context=f"tenant={self.tenant_id} ",
            )
        except OSError as exc:
            log.error("cannot spawn the bridge tenant=%s: %s", self.tenant_id, exc)
            self.run_facts.fatal_message = causes.clip(str(exc))
            return None

    async def _supervise(self, proc: BridgeProcess) -> Action | None:
        """Waits for the child to exit, acting on requests meanwhile. Returns the first thing we asked."""
        cause: Action | None = None
        while not proc.exited:
            action = self._mailbox.take()
            if action is None and not self.desired_running and cause is None:  # the desired state rules
                log.warning("desired state stopped with no stop asked: stopping tenant=%s", self.tenant_id)
                action = Action("stop", "requested")
            if action is None:
                waiter = asyncio.ensure_future(self._mailbox.wake.wait())
                either: set[asyncio.Future[Any]] = {proc.exit_future(), waiter}
                try:  # woken by a request or the exit; the desired state is looked at again each second
                    await asyncio.wait(either, timeout=RECHECK_DESIRED_S, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                continue
            if action.outranks(cause):
                cause = action
            self._acting = True
            try:
                await self._act(proc, action)
            finally:
                self._acting = False
        return cause

    async def _act(self, proc: BridgeProcess, action: Action) -> None:
        stop_wait_s = self.host.settings.stop_wait_s
        if action.kind == "kill":
            log.warning(
                "killing the bridge pid=%d reason=%s tenant=%s", proc.pid, action.reason, self.tenant_id
            )
            if action.reason == "heartbeat_timeout":  # hung: a polite stop would never be answered
                await proc.kill()
            else:
                await proc.terminate(min(stop_wait_s, 2.0))
            return
        if self.state is not S.STOPPING:
            self._change(S.STOPPING, action.reason)
        if action.kind == "logout" and proc.conn is not None:
            with contextlib.suppress(protocol.BridgeError):
                await proc.conn.request(protocol.CMD_LOGOUT, {}, timeout_s=min(stop_wait_s, 5.0))
            if await proc.wait(stop_wait_s) is not None:
                return
        await proc.terminate(stop_wait_s)

    async def _after_exit(self, outcome: Outcome) -> bool:
        """Classifies the exit; returns whether the runner should start the bridge again."""
        self.last_exit_code = outcome.code
        cause, pending = outcome.cause, self._mailbox.take()
        asked = [a for a in (cause, pending) if a is not None]
        kinds = {a.kind for a in asked}
        if "logout" in kinds:
            await self._wipe()
            self._change(S.LOGGED_OUT, next(a.reason for a in asked if a.kind == "logout"))
            return False
        if "stop" in kinds or not self.desired_running or self.host.closing:
            reason = next((a.reason for a in asked if a.kind == "stop"), "stopped")
            self._change(S.STOPPED, reason, exit_code=outcome.code)
            return self._wanted_again()
        if cause is not None and cause.kind == "expire":
            self._change(S.FAILED, cause.reason, exit_code=outcome.code)
            return False
        if "restart" in kinds:
            self.breaker.reset()
            return True
        return await self._crashed(outcome, cause)

    async def _crashed(self, outcome: Outcome, cause: Action | None) -> bool:
        reason = cause.reason if cause else (outcome.fatal_code or describe_exit(outcome.code))
        log.warning(
            "bridge exited unasked code=%s reason=%s tenant=%s; last stderr: %s",
            outcome.code,
            reason,
            self.tenant_id,
            " | ".join(self.run_facts.stderr_tail) or "-",
        )
        failures = self.breaker.record()
        if self.breaker.tripped():
            log.error(
                "crash loop: %d failures within %.0fs, giving up until someone asks tenant=%s",
                failures,
                self.breaker.window_s,
                self.tenant_id,
            )
            self._change(S.FAILED, "crash_loop", error=outcome.error, exit_code=outcome.code, cause=reason)
            return False
        self.restarts += 1
        if cause is None and outcome.code == protocol.EXIT_LOGGED_OUT:
            self.own_number = None
            self._change(S.LOGGED_OUT, "phone_logout", exit_code=outcome.code)
            return True  # a fresh QR at once
        settings = self.host.settings
        delay = policy.backoff_delay(failures, settings.backoff_base_s, settings.backoff_cap_s)
        self._change(
            S.BACKOFF,
            reason,
            error=outcome.error,
            exit_code=outcome.code,
            retry_in_s=round(delay, 3),
            failures_in_window=failures,
            attempts_left=self.breaker.max_failures - failures,
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._mailbox.wake.wait(), delay)  # a request cuts the wait short
        return True

    async def _wipe(self) -> None:
        self.own_number = None
        try:
            await asyncio.to_thread(paths.wipe_tenant_dir, self.host.settings.sessions_dir, self.tenant_id)
        except (OSError, paths.UnsafeSessionPath) as exc:
            log.error("cannot wipe the session folder tenant=%s: %s", self.tenant_id, exc)

    # -- what the bridge says --
    def _on_heartbeat(self, gen: int) -> None:
        """A heartbeat line (not decoded: only "it is alive" matters here)."""
        if gen == self._gen:
            self.run_facts.last_seen = self._clock()

    def _on_event(self, gen: int, ev: BridgeEvent) -> None:
        if gen != self._gen:
            return
        run = self.run_facts
        run.last_seen = self._clock()
        name = ev.name
        if name in protocol.FORWARDED_EVENTS:  # messages, acks, changes, notices: to messaging
            self.host.dispatch_message(self.tenant_id, name, ev.data)
        elif name == protocol.EVENT_STATE:
            self._on_state(ev.data)
        elif name == protocol.EVENT_QR:
            self._on_qr(ev.data)
        elif name == protocol.EVENT_READY:
            if ev.data.get("number"):
                self.own_number = str(ev.data["number"])  # whole (db/sessions.py refuses a longer one)
        elif name == protocol.EVENT_HELLO:
            run.on_hello(ev.data)
        elif name == protocol.EVENT_BROWSER:
            run.on_browser(ev.data, self.folder)
        elif name == protocol.EVENT_ERROR:
            run.on_error(ev.data)

    def _on_state(self, data: dict[str, Any]) -> None:
        new = BRIDGE_STATES.get(data.get("state", ""))
        if new is None or new is self.state:
            return
        if self.state is S.STOPPING or not can_transition(self.state, new):
            log.debug("bridge state %s ignored in %s tenant=%s", new.value, self.state.value, self.tenant_id)
            return
        if new is not S.QR:
            self.run_facts.qr = None
        error = self.run_facts.fatal_message if new is S.DISCONNECTED else None  # reported just before
        self._change(new, data.get("reason"), error=error)

    def _on_qr(self, data: dict[str, Any]) -> None:
        if int(data.get("attempt") or 0) > self.host.settings.qr_max_cycles:
            self.request("expire", "qr_expired")
            return
        shown = self.run_facts.show_qr(data, self._clock())
        self.host.publish(self.tenant_id, SESSION_QR, shown.public())

    # -- the watchdog --
    # Heartbeats only move ``last_seen``. The supervisor's one watchdog sweep looks at every watched
    # session each ``Supervisor.watchdog_period_s`` (a tenth of a heartbeat interval): a healthy
    # session is passed over at a glance, and only one whose deadline (BridgeRun.deadline) falls
    # before the next sweep gets a one-shot timer at that deadline -- so a hung bridge is still
    # killed as soon as it has been silent for two intervals, while an idle healthy session costs no
    # timer and no wake-up of its own. The rules are BridgeRun's.
    def _arm(self) -> None:
        if self.proc is not None and not self.proc.exited:
            self.host.watch(self)

    def _disarm(self) -> None:
        self.host.unwatch(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self, now: float, wall_ms: float, next_sweep: float) -> None:
        """Called by the watchdog sweep: acts if a deadline has passed, or times the one that falls
        before the next sweep precisely."""
        deadline = self.run_facts.deadline(self.state, self.limits, now, wall_ms)
        if deadline <= now:
            self.check(now, wall_ms)
        elif deadline < next_sweep and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(deadline - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.check(self._clock(), self._wall_clock() * 1000)  # a heartbeat since then: nothing to do

    def check(self, now: float, wall_ms: float) -> None:
        """Heartbeat watchdog (silent for two intervals), start timeout and QR lifetime."""
        proc = self.proc
        if proc is None or proc.exited or self._acting or self._mailbox.pending is not None:
            return
        verdict = self.run_facts.verdict(self.state, self.limits, now, wall_ms)
        if verdict is not None:
            self.request(*verdict)

    def memory_roots(self) -> list[int]:
        proc = self.proc
        if proc is None or proc.exited:
            return []
        return [p for p in (proc.pid, self.run_facts.browser_pid) if p]
