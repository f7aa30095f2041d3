"""One tenant's supervised session: the runner task that owns its bridge child.

The runner is the only code that spawns, signals or waits for the child. Everything else (API
commands, the watchdog, the memory cap, the QR policy) asks it to act through ``request()`` and a
wake-up event, so two actions never race on one process. ``_change()`` is the one mutation point of
the session's state: it checks the transition table, then hands a snapshot to the supervisor, which
persists it and publishes ``session.state``.

Exit classification (``_after_exit``), after Supervisor's ``finish()``:
    logout asked                      -> LOGGED_OUT (profile wiped), runner ends
    stop asked / desired stopped      -> STOPPED, runner ends
    QR never scanned                  -> FAILED qr_expired, runner ends
    restart asked                     -> STARTING at once, breaker reset
    phone unlinked the device (5)     -> LOGGED_OUT phone_logout, then STARTING (a fresh QR)
    anything else (crash, kill by the watchdog or the memory cap)
        -> crash-loop breaker tripped ? FAILED crash_loop (runner ends, waits for a person)
                                      : BACKOFF <reason>, sleep with jitter, STARTING
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.bridge import protocol
from control_plane.bridge.protocol import BridgeEvent
from control_plane.supervisor import errors as sup_errors
from control_plane.supervisor import paths, policy
from control_plane.supervisor.process import BridgeProcess, bridge_env, cleanup_profile, describe_exit
from control_plane.supervisor.states import (
    LIVE,
    InvalidTransition,
    SessionState,
    SessionStateMachine,
    Transition,
    can_transition,
)

if TYPE_CHECKING:
    from control_plane.supervisor.manager import Supervisor

log = logging.getLogger(__name__)
S = SessionState

# What the runner can be asked to do, strongest first: a weaker request never replaces a stronger one.
ACTION_PRIORITY = {"logout": 5, "stop": 4, "restart": 3, "expire": 2, "kill": 1}
BRIDGE_STATES = {
    protocol.STATE_QR: S.QR,
    protocol.STATE_AUTHENTICATED: S.AUTHENTICATED,
    protocol.STATE_READY: S.READY,
    protocol.STATE_DISCONNECTED: S.DISCONNECTED,
}
STDERR_TAIL = 10


@dataclass(frozen=True)
class Action:
    kind: str  # logout | stop | restart | expire | kill
    reason: str


@dataclass(frozen=True)
class Outcome:
    code: int
    cause: Action | None  # what we asked for, None when it died on its own
    fatal_code: str | None  # code of the bridge's fatal `error` event, if it reported one


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


class TenantSession:
    """Actual state, desired state and the runner of one tenant's bridge."""

    def __init__(
        self,
        sup: Supervisor,
        tenant_id: str,
        *,
        sandbox: bool,
        desired_running: bool,
        row: dict[str, Any] | None = None,
    ) -> None:
        self.sup = sup
        self.tenant_id = tenant_id
        self.sandbox = sandbox
        self.driver = sup.settings.bridge_driver or ("scripted" if sandbox else "wwebjs")
        self.desired_running = desired_running
        state, reason = S.STOPPED, None
        if row and row.get("state") in (S.FAILED.value, S.LOGGED_OUT.value):
            state, reason = S(row["state"]), row.get("reason")
        self.machine = SessionStateMachine(state, reason, row.get("since") if row else None)
        self.restarts: int = (row or {}).get("restarts") or 0
        self.last_exit_code: int | None = (row or {}).get("last_exit_code")
        self.own_number: str | None = (row or {}).get("own_number")
        self.breaker = policy.CrashLoopBreaker(sup.settings.crash_loop_max, sup.settings.crash_loop_window_s)
        self.lock = asyncio.Lock()  # serializes API commands on this tenant
        self.runner: asyncio.Task | None = None
        self.proc: BridgeProcess | None = None
        self._gen = 0
        self._action: Action | None = None
        self._acting = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None  # only when a deadline falls between two sweeps
        self._reset_run()

    def _reset_run(self) -> None:
        self.last_seen = time.monotonic()
        self.hello = False
        self.browser_pid: int | None = None
        self.user_data_dir: Path | None = None
        self.fatal_code: str | None = None
        self.current_qr: dict[str, Any] | None = None
        self.first_qr_at: float | None = None
        self.memory_bytes: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

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
    def folder(self) -> Path:
        return paths.tenant_dir(self.sup.settings.sessions_dir, self.tenant_id)

    def profile_dirs(self) -> list[Path]:
        dirs = [paths.profile_dir(self.folder)]
        if self.user_data_dir is not None and self.user_data_dir not in dirs:
            dirs.append(self.user_data_dir)
        return dirs

    def qr(self) -> dict[str, Any] | None:
        qr = self.current_qr
        if self.state is not S.QR or qr is None or qr["expires_at_ms"] <= time.time() * 1000:
            return None
        return {"qr": qr["qr"], "attempt": qr["attempt"], "expires_at": qr["expires_at"]}

    def snapshot(self) -> dict[str, Any]:
        """The persisted columns of the actual state."""
        alive = self.proc is not None and not self.proc.exited
        return {
            "state": self.state.value,
            "reason": self.machine.reason,
            "since": self.machine.since,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "pid": self.proc.pid if alive else None,
            "own_number": self.own_number,
        }

    # -- the one mutation point --
    def _change(self, new: SessionState, reason: str | None = None, **extra: Any) -> Transition | None:
        try:
            transition = self.machine.change(new, reason)
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
            "since": iso(transition.since),
            "restarts": self.restarts,
            "desired_state": "running" if self.desired_running else "stopped",
            **extra,
        }
        if new is S.READY:
            data["own_number"] = self.own_number
        self.sup.record_state(self, data)
        return transition

    # -- requests from outside the runner --
    def request(self, kind: str, reason: str) -> None:
        """Asks the runner to act (it wakes up at once). A weaker request never replaces a stronger one."""
        current = self._action
        if current is None or ACTION_PRIORITY[kind] >= ACTION_PRIORITY[current.kind]:
            self._action = Action(kind, reason)
        self._wake.set()

    def _take_action(self) -> Action | None:
        action, self._action = self._action, None
        self._wake.clear()
        return action

    # -- the runner --
    async def run(self) -> None:
        try:
            while True:
                action = self._take_action()
                if (
                    (action and action.kind in ("stop", "logout"))
                    or not self.desired_running
                    or self.sup.closing
                ):
                    await self._finish_idle(action)
                    return
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

    async def _finish_idle(self, action: Action | None) -> None:
        """Ends the runner with no child alive."""
        if action and action.kind == "logout":
            await self._wipe()
            if self.state is not S.LOGGED_OUT:
                self._change(S.LOGGED_OUT, action.reason)
        elif self.state not in (S.STOPPED, S.LOGGED_OUT) and not (self.state is S.FAILED and action is None):
            self._change(S.STOPPED, action.reason if action else "stopped")

    async def _run_bridge_once(self) -> Outcome:
        sup = self.sup
        folder = paths.tenant_dir(sup.settings.sessions_dir, self.tenant_id, create=True)
        killed, removed = await cleanup_profile(self.profile_dirs())
        if killed or removed:
            log.warning(
                "freed the profile before start tenant=%s killed=%d removed=%s",
                self.tenant_id,
                killed,
                removed,
            )
        self._reset_run()
        self._change(S.STARTING, self.machine.reason if self.state is S.BACKOFF else None)
        self._gen += 1
        gen = self._gen
        try:
            proc = await BridgeProcess.spawn(
                sup.bridge_argv(self.tenant_id, folder, self.driver),
                cwd=folder,
                env=bridge_env(tmpdir=folder / paths.TMP_DIR_NAME, chrome_path=sup.settings.chrome_path),
                on_event=lambda ev: self._on_event(gen, ev),
                on_stderr=self._on_stderr,
                on_heartbeat=lambda: self._on_heartbeat(gen),
                log_context=f"tenant={self.tenant_id} ",
            )
        except OSError as exc:
            log.error("cannot spawn the bridge tenant=%s: %s", self.tenant_id, exc)
            self.fatal_code = "spawn_failed"
            return Outcome(code=-255, cause=None, fatal_code="spawn_failed")
        self.proc = proc
        self.last_seen = time.monotonic()
        log.info("bridge spawned pid=%d driver=%s tenant=%s", proc.pid, self.driver, self.tenant_id)
        sup.record_state(self, None)  # persist the pid
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
        return Outcome(code=code, cause=cause, fatal_code=self.fatal_code)

    async def _supervise(self, proc: BridgeProcess) -> Action | None:
        """Waits for the child to exit, acting on requests meanwhile. Returns the first thing we asked."""
        cause: Action | None = None
        while not proc.exited:
            action = self._take_action()
            if action is None:
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({proc.exit_future(), waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                continue
            if cause is None or ACTION_PRIORITY[action.kind] > ACTION_PRIORITY[cause.kind]:
                cause = action
            self._acting = True
            try:
                await self._act(proc, action)
            finally:
                self._acting = False
        return cause

    async def _act(self, proc: BridgeProcess, action: Action) -> None:
        stop_wait_s = self.sup.settings.stop_wait_s
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
        cause, pending = outcome.cause, self._take_action()
        asked = [a for a in (cause, pending) if a is not None]
        kinds = {a.kind for a in asked}
        if "logout" in kinds:
            await self._wipe()
            self._change(S.LOGGED_OUT, next(a.reason for a in asked if a.kind == "logout"))
            return False
        if "stop" in kinds or not self.desired_running or self.sup.closing:
            reason = next((a.reason for a in asked if a.kind == "stop"), "stopped")
            self._change(S.STOPPED, reason, exit_code=outcome.code)
            return False
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
            " | ".join(self.stderr_tail) or "-",
        )
        failures = self.breaker.record()
        if self.breaker.tripped():
            log.error(
                "crash loop: %d failures within %.0fs, giving up until someone asks tenant=%s",
                failures,
                self.breaker.window_s,
                self.tenant_id,
            )
            self._change(S.FAILED, "crash_loop", exit_code=outcome.code, cause=reason)
            return False
        self.restarts += 1
        if cause is None and outcome.code == protocol.EXIT_LOGGED_OUT:
            self.own_number = None
            self._change(S.LOGGED_OUT, "phone_logout", exit_code=outcome.code)
            return True  # a fresh QR at once
        delay = policy.backoff_delay(
            failures, self.sup.settings.backoff_base_s, self.sup.settings.backoff_cap_s
        )
        self._change(
            S.BACKOFF,
            reason,
            exit_code=outcome.code,
            retry_in_s=round(delay, 3),
            failures_in_window=failures,
            attempts_left=self.breaker.max_failures - failures,
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)  # a request cuts the wait short
        return True

    async def _wipe(self) -> None:
        self.own_number = None
        try:
            await asyncio.to_thread(paths.wipe_tenant_dir, self.sup.settings.sessions_dir, self.tenant_id)
        except (OSError, paths.UnsafeSessionPath) as exc:
            log.error("cannot wipe the session folder tenant=%s: %s", self.tenant_id, exc)

    # -- what the bridge says --
    def _on_stderr(self, line: str) -> None:
        self.stderr_tail.append(line)
        if " level=error " in line or " level=warn " in line:
            log.warning("bridge: %s", line)
        else:
            log.debug("bridge: %s", line)

    def _on_heartbeat(self, gen: int) -> None:
        """A heartbeat line (not decoded: only "it is alive" matters here)."""
        if gen == self._gen:
            self.last_seen = time.monotonic()

    def _on_event(self, gen: int, ev: BridgeEvent) -> None:
        if gen != self._gen:
            return
        self.last_seen = time.monotonic()
        handler = getattr(self, f"_ev_{ev.name}", None)
        if handler is not None:
            handler(ev.data)

    def _ev_hello(self, data: dict[str, Any]) -> None:
        self.hello = True
        if data.get("browser_pid"):
            self.browser_pid = int(data["browser_pid"])

    def _ev_browser(self, data: dict[str, Any]) -> None:
        if data.get("browser_pid"):
            self.browser_pid = int(data["browser_pid"])
        udd = data.get("user_data_dir")
        if isinstance(udd, str) and udd:
            if paths.inside(self.folder, udd):
                self.user_data_dir = Path(udd).resolve()
            else:
                log.error("bridge reported a profile outside its folder, ignored tenant=%s", self.tenant_id)

    def _ev_state(self, data: dict[str, Any]) -> None:
        new = BRIDGE_STATES.get(data.get("state", ""))
        if new is None or new is self.state:
            return
        if self.state is S.STOPPING or not can_transition(self.state, new):
            log.debug("bridge state %s ignored in %s tenant=%s", new.value, self.state.value, self.tenant_id)
            return
        if new is not S.QR:
            self.current_qr = None
        self._change(new, data.get("reason"))

    def _ev_qr(self, data: dict[str, Any]) -> None:
        attempt = int(data.get("attempt") or 0)
        if attempt > self.sup.settings.qr_max_cycles:
            self.request("expire", "qr_expired")
            return
        expires_ms = int(data.get("expires_at") or 0)
        expires_at = iso(dt.datetime.fromtimestamp(expires_ms / 1000, dt.UTC).replace(tzinfo=None))
        self.current_qr = {
            "qr": data.get("qr"),
            "attempt": attempt,
            "expires_at": expires_at,
            "expires_at_ms": expires_ms,
        }
        if self.first_qr_at is None:
            self.first_qr_at = time.monotonic()
        self.sup.publish(
            self.tenant_id, "session.qr", {"qr": data.get("qr"), "attempt": attempt, "expires_at": expires_at}
        )

    def _ev_ready(self, data: dict[str, Any]) -> None:
        if data.get("number"):
            self.own_number = str(data["number"])[:32]

    def _ev_error(self, data: dict[str, Any]) -> None:
        log.warning(
            "bridge error code=%s fatal=%s message=%s tenant=%s",
            data.get("code"),
            data.get("fatal"),
            data.get("message"),
            self.tenant_id,
        )
        if data.get("fatal"):
            self.fatal_code = str(data.get("code") or "fatal")[:100]

    def _ev_message(self, data: dict[str, Any]) -> None:
        self.sup.dispatch_message(self.tenant_id, protocol.EVENT_MESSAGE, data)

    def _ev_message_ack(self, data: dict[str, Any]) -> None:
        self.sup.dispatch_message(self.tenant_id, protocol.EVENT_MESSAGE_ACK, data)

    # -- the watchdog --
    # Heartbeats only move ``last_seen``. The supervisor's one watchdog sweep looks at every watched
    # session each ``Supervisor.watchdog_period_s`` (a tenth of a heartbeat interval): a healthy
    # session is passed over at a glance, and only one whose deadline (``next_deadline``) falls
    # before the next sweep gets a one-shot timer at that deadline -- so a hung bridge is still
    # killed as soon as it has been silent for two intervals, while an idle healthy session costs no
    # timer and no wake-up of its own.
    def _arm(self) -> None:
        if self.proc is not None and not self.proc.exited:
            self.sup.watch(self)

    def _disarm(self) -> None:
        self.sup.unwatch(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def next_deadline(self, wall_ms: float) -> float:
        """When ``check`` would next act, judged on what the bridge last said (monotonic seconds)."""
        settings = self.sup.settings
        if self.state is S.STARTING:
            deadline = self.last_seen + self.sup.start_timeout_s
        else:
            deadline = self.last_seen + 2 * settings.heartbeat_interval_s
        if self.state is S.QR and self.first_qr_at is not None:
            deadline = min(deadline, self.first_qr_at + settings.qr_ttl_s)
            qr = self.current_qr
            if qr is not None and qr["attempt"] >= settings.qr_max_cycles:
                deadline = min(deadline, time.monotonic() + (qr["expires_at_ms"] - wall_ms) / 1000)
        return deadline + 0.001

    def sweep(self, now: float, wall_ms: float, next_sweep: float) -> None:
        """Called by the watchdog sweep: acts if a deadline has passed, or times the one that falls
        before the next sweep precisely."""
        deadline = self.next_deadline(wall_ms)
        if deadline <= now:
            self.check(now, wall_ms)
        elif deadline < next_sweep and self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.check(time.monotonic(), time.time() * 1000)  # a heartbeat since then: nothing to do

    def check(self, now: float, wall_ms: float) -> None:
        """Heartbeat watchdog (silent for two intervals), start timeout and QR lifetime."""
        proc = self.proc
        if proc is None or proc.exited or self._acting or self._action is not None:
            return
        settings = self.sup.settings
        if self.state is S.STARTING:
            # Loading the driver (whatsapp-web.js + puppeteer) blocks node's loop for a second or
            # two on a cold cache: while starting, silence is judged by the start timeout instead.
            if now - self.last_seen > self.sup.start_timeout_s:
                self.request("kill", "start_timeout")
        elif policy.heartbeat_overdue(self.last_seen, settings.heartbeat_interval_s, now):
            self.request("kill", "heartbeat_timeout")
        elif self.state is S.QR and self.first_qr_at is not None:
            qr = self.current_qr
            past_ttl = now - self.first_qr_at > settings.qr_ttl_s
            last_expired = (
                qr is not None and qr["attempt"] >= settings.qr_max_cycles and wall_ms > qr["expires_at_ms"]
            )
            if past_ttl or last_expired:
                self.request("expire", "qr_expired")

    def memory_roots(self) -> list[int]:
        proc = self.proc
        if proc is None or proc.exited:
            return []
        return [p for p in (proc.pid, self.browser_pid) if p]

    async def bridge_request(
        self, cmd: str, args: dict[str, Any], *, timeout_s: float, ambiguous: bool
    ) -> dict[str, Any]:
        """A command to the live bridge, with errors translated to supervisor errors."""
        proc = self.proc
        if (
            proc is None
            or proc.exited
            or proc.conn is None
            or self.state not in LIVE
            or self.state is S.STOPPING
        ):
            raise sup_errors.SessionNotReady(
                self.tenant_id, self.state.value, f"no running WhatsApp session (state {self.state.value})"
            )
        try:
            return await proc.conn.request(cmd, args, timeout_s=timeout_s)
        except protocol.BridgeCommandFailed as exc:
            raise sup_errors.from_command_failure(self.tenant_id, self.state.value, exc) from None
        except protocol.BridgeTimeout:
            raise sup_errors.BridgeUnavailable(
                f"the session did not answer {cmd} within {timeout_s:g}s", ambiguous=ambiguous
            ) from None
        except protocol.BridgeClosed:
            raise sup_errors.BridgeUnavailable(
                f"the session ended during {cmd}", ambiguous=ambiguous
            ) from None
