"""The Supervisor: one bridge child per tenant, desired and actual state persisted, session events
published through one boundary (``events.publish``), and the loops that watch every child.

Lifecycle (``startup`` / ``close``, driven by the app's cleanup context):
- startup: sweep orphans of a previous run (bridges and browsers under SESSIONS_DIR), mark stale
  live states as stopped, then start every active tenant whose desired state is running (and that is
  not ``failed``), one every BOOT_STAGGER_S so a hundred browsers do not start in the same second.
- close: refuse new commands, stop every bridge in parallel within STOP_WAIT_S (+ a margin, then
  SIGKILL), flush the state writer; desired states are left as they are, so the next boot brings
  back exactly the sessions that should run.

Background tasks, all owned here and cancelled in ``close``: the boot task, the memory check, the
watchdog sweep (heartbeats, start timeout, QR lifetime of every live bridge), the state writer and
the message dispatcher (outbound.py), and one runner per tenant with a bridge.

Each ``TenantSession`` sees its Supervisor only as a ``host.SessionHost``; what the Supervisor needs
from a session is the session's public methods. Time comes from ``clock`` / ``wall_clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from control_plane import errors
from control_plane.bridge import protocol
from control_plane.config import ConfigError, Settings
from control_plane.db import sessions as sessions_db
from control_plane.db import tenants as tenants_db
from control_plane.events import format_ts, format_ts_or_none
from control_plane.supervisor import errors as sup_errors
from control_plane.supervisor import paths, policy
from control_plane.supervisor.commands import bridge_request
from control_plane.supervisor.outbound import (
    EventPublisher,
    LogPublisher,
    MessageDispatcher,
    MessageListener,
    StateWriter,
)
from control_plane.supervisor.process import find_orphans, kill_process_groups
from control_plane.supervisor.session import TenantSession
from control_plane.supervisor.states import SessionState

log = logging.getLogger(__name__)
S = SessionState

SEND_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 10.0
SHUTDOWN_MARGIN_S = 3.0
DRIVERS = ("scripted", "wwebjs")
WATCHDOG_PERIOD_MAX_S = 0.5


class Supervisor:
    """Owns every tenant's bridge. See the module docstring and docs/CONVENTIONS.md (pinned seam)."""

    def __init__(
        self,
        settings: Settings,
        db: Any,
        events: EventPublisher | None = None,
        *,
        clock: policy.Clock = time.monotonic,
        wall_clock: policy.Clock = time.time,
    ) -> None:
        driver = getattr(settings, "bridge_driver", None)
        if driver not in (None, *DRIVERS):
            raise ConfigError(f"Config 'BRIDGE_DRIVER' must be scripted or wwebjs, got {driver!r}")
        self.settings = settings
        self.db = db
        self.events: EventPublisher = events or LogPublisher()
        self.sessions_dir = paths.sessions_root(settings.sessions_dir)
        self.clock = clock  # monotonic seconds: heartbeats, deadlines, the crash-loop window
        self.wall_clock = wall_clock  # epoch seconds: QR expiry (the bridge's unit)
        self.start_timeout_s = policy.start_timeout_s(settings.heartbeat_interval_s)
        # One sweep looks at every live bridge this often; a deadline that falls between two sweeps
        # (a bridge about to be silent for two intervals) gets a one-shot timer of its own.
        self.watchdog_period_s = min(WATCHDOG_PERIOD_MAX_S, settings.heartbeat_interval_s / 10)
        self._watched: dict[str, TenantSession] = {}
        self.is_running = False
        self.closing = False
        self._sessions: dict[str, TenantSession] = {}
        self._forgotten: set[str] = set()
        self._states = StateWriter(self._write, self.events, self._forgotten)
        self._messages = MessageDispatcher()
        self._tasks: list[asyncio.Task] = []
        self._boot_task: asyncio.Task | None = None
        self.boot_done = asyncio.Event()
        # SQLite has one writer at a time and its busy handler is neither fair nor patient enough
        # for hundreds of concurrent starts: queue our own writes here instead.
        self._sqlite_writes = asyncio.Lock() if getattr(db, "is_sqlite", False) else None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Any]:
        """A write transaction (serialized among the supervisor's own writers on SQLite)."""
        if self._sqlite_writes is None:
            async with self.db.begin() as conn:
                yield conn
            return
        async with self._sqlite_writes, self.db.begin() as conn:
            yield conn

    # ------------------------------------------------------------------ lifecycle
    async def startup(self, *, boot: bool = True) -> None:
        root = paths.sessions_root(self.settings.sessions_dir, create=True)
        swept = await asyncio.to_thread(lambda: kill_process_groups(find_orphans(root)))
        if swept:
            log.warning("boot sweep: killed %d orphaned bridge/browser process(es) under %s", swept, root)
        links = await asyncio.to_thread(paths.sweep_tmp_links)
        if links:
            log.info("boot sweep: removed %d dangling TMPDIR symlink(s) of deleted sessions", links)
        async with self._write() as conn:
            await sessions_db.mark_stale_states_stopped(conn)
        async with self.db.connect() as conn:
            to_start = await sessions_db.list_sessions_to_start(conn) if boot else []
        self._tasks = [
            asyncio.create_task(self._states.run(), name="supervisor-writer"),
            asyncio.create_task(self._messages.run(), name="supervisor-messages"),
            asyncio.create_task(self._memory_loop(), name="supervisor-memory"),
            asyncio.create_task(self._watchdog_loop(), name="supervisor-watchdog"),
        ]
        self.is_running = True
        self._boot_task = asyncio.create_task(self._boot(to_start), name="supervisor-boot")
        log.info("supervisor up: %d session(s) to bring back, sessions in %s", len(to_start), root)

    async def _boot(self, rows: list[dict[str, Any]]) -> None:
        try:
            for i, row in enumerate(rows):
                if self.closing:
                    return
                if i:
                    await asyncio.sleep(self.settings.boot_stagger_s)
                try:
                    session = await self._session(row["tenant_id"], sandbox=bool(row["sandbox"]))
                    session.desired_running = True
                    self._spawn_runner(session)
                except Exception:
                    log.exception("boot: cannot start tenant=%s", row["tenant_id"])
        finally:
            self.boot_done.set()

    async def close(self) -> None:
        """Stops every bridge in parallel within stop_wait_s (+ margin); desired states are kept."""
        if self.closing:
            return
        self.closing = True
        self.is_running = False
        if self._boot_task is not None:
            self._boot_task.cancel()
            await asyncio.gather(self._boot_task, return_exceptions=True)
        runners = [s.runner for s in self._sessions.values() if s.runner is not None and s.running]
        for session in self._sessions.values():
            if session.running:
                session.request("stop", "shutdown")
        if runners:
            _, late = await asyncio.wait(runners, timeout=self.settings.stop_wait_s + SHUTDOWN_MARGIN_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
        await self._states.flush(5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("supervisor stopped (%d session(s))", len(runners))

    def _check_open(self) -> None:
        if self.closing:
            raise sup_errors.SupervisorClosed("the control plane is shutting down; try again shortly")

    # ------------------------------------------------------------------ sessions
    async def _session(self, tenant_id: str, *, sandbox: bool | None = None) -> TenantSession:
        """The in-memory session of this tenant, loaded from the database on first use."""
        paths.validate_tenant_id(tenant_id)
        session = self._sessions.get(tenant_id)
        if session is not None:
            return session
        async with self.db.connect() as conn:
            if sandbox is None:
                tenant = await tenants_db.get_tenant(conn, tenant_id)
                if tenant is None:
                    raise errors.NotFound("tenant not found", code="tenant_not_found")
                sandbox = bool(tenant["sandbox"])
            row = await sessions_db.get_session_state(conn, tenant_id)
        session = self._sessions.get(tenant_id)  # loaded meanwhile by a concurrent call
        if session is None:
            session = TenantSession(
                self,
                tenant_id,
                sandbox=sandbox,
                desired_running=bool(row and row["desired_state"] == "running"),
                row=row,
                clock=self.clock,
                wall_clock=self.wall_clock,
            )
            self._sessions[tenant_id] = session
        return session

    def _spawn_runner(self, session: TenantSession) -> None:
        session.runner = asyncio.create_task(session.run(), name=f"session-{session.tenant_id}")

    async def _set_desired(self, session: TenantSession, running: bool) -> None:
        """Stored first, then in memory: a write that fails (503) changes nothing the runner acts on."""
        async with self._write() as conn:
            await sessions_db.set_desired_state(
                conn,
                session.tenant_id,
                sessions_db.DESIRED_RUNNING if running else sessions_db.DESIRED_STOPPED,
            )
        session.desired_running = running

    async def _await_runner(self, session: TenantSession) -> None:
        if session.runner is not None:
            await asyncio.wait({session.runner}, timeout=self.settings.stop_wait_s + SHUTDOWN_MARGIN_S + 5)

    # ------------------------------------------------------------------ commands (pinned seam)
    async def start(self, tenant_id: str) -> dict[str, Any]:
        """Desired state running; the runner starts the bridge unless one runs (a failed session starts
        afresh). Returns at once: the status shows where the session is and ``desired_state`` where
        it goes. A start while one is starting, or while a stop is under way, is fine: the runner
        finishes the stop and starts again."""
        self._check_open()
        session = await self._session(tenant_id)
        paths.tenant_dir(self.settings.sessions_dir, tenant_id)  # refuse a planted symlink early
        async with session.lock:
            await self._set_desired(session, True)
            if not session.running:
                session.breaker.reset()
                self._spawn_runner(session)
        return await self.status(tenant_id)

    async def stop(self, tenant_id: str) -> dict[str, Any]:
        """Desired state stopped; the runner stops the bridge (SIGTERM, then SIGKILL of its group) and
        frees the profile. Returns at once (the status's ``desired_state`` is ``stopped``)."""
        self._check_open()
        session = await self._session(tenant_id)
        async with session.lock:
            await self._set_desired(session, False)
            if session.running:
                session.request("stop", "requested")
            else:
                session.mark_stopped("requested")
        return await self.status(tenant_id)

    async def restart(self, tenant_id: str) -> dict[str, Any]:
        """Desired state running; the runner stops the bridge and starts a new one at once (no backoff;
        the crash-loop breaker is reset). Returns at once."""
        self._check_open()
        session = await self._session(tenant_id)
        paths.tenant_dir(self.settings.sessions_dir, tenant_id)
        async with session.lock:
            await self._set_desired(session, True)
            session.breaker.reset()
            if session.running:
                session.request("restart", "restart")
            else:
                self._spawn_runner(session)
        return await self.status(tenant_id)

    async def logout(self, tenant_id: str) -> dict[str, Any]:
        """Logs the WhatsApp session out and wipes the profile; desired state stopped."""
        self._check_open()
        session = await self._session(tenant_id)
        paths.tenant_dir(self.settings.sessions_dir, tenant_id)  # never wipe through a planted symlink
        async with session.lock:
            await self._set_desired(session, False)
            session.request("logout", "logout")
            if not session.running:
                self._spawn_runner(session)  # no bridge: the runner just wipes and records it
            await self._await_runner(session)
        return await self.status(tenant_id)

    async def forget(self, tenant_id: str) -> None:
        """Tenant deleted: stop its bridge, then remove its session folder (inside SESSIONS_DIR only)."""
        paths.validate_tenant_id(tenant_id)
        session = self._sessions.get(tenant_id)
        if session is not None:
            async with session.lock:
                session.desired_running = False
                if session.running:
                    session.request("stop", "tenant_deleted")
                    await self._await_runner(session)
        self._forgotten.add(tenant_id)
        self._sessions.pop(tenant_id, None)
        try:
            removed = await asyncio.to_thread(paths.remove_tenant_dir, self.settings.sessions_dir, tenant_id)
        except FileNotFoundError:
            removed = False
        log.info("session forgotten (folder removed=%s) tenant=%s", removed, tenant_id)

    # ------------------------------------------------------------------ queries
    async def status(self, tenant_id: str) -> dict[str, Any]:
        paths.validate_tenant_id(tenant_id)
        session = self._sessions.get(tenant_id)
        if session is None:
            async with self.db.connect() as conn:
                row = await sessions_db.get_session_state(conn, tenant_id)
            row = row or {}
            return {
                "state": row.get("state", "stopped"),
                "reason": row.get("reason"),
                "detail": row.get("detail"),
                "error": row.get("error"),
                "since": format_ts_or_none(row.get("since")),
                "restarts": row.get("restarts", 0),
                "pid": None,
                "memory_bytes": None,
                "uptime_s": None,
                "own_number": row.get("own_number"),
                "desired_state": row.get("desired_state", "stopped"),
                "qr_attempt": None,
                "last_exit_code": row.get("last_exit_code"),
                "driver": None,
            }
        proc = session.proc if session.proc is not None and not session.proc.exited else None
        memory = None
        if proc is not None:
            memory = await asyncio.to_thread(policy.tree_memory_bytes, session.memory_roots())
        qr = session.qr()
        return {
            "state": session.state.value,
            "reason": session.machine.reason,
            "detail": session.machine.detail,
            "error": session.machine.error,
            "since": format_ts(session.machine.since),
            "restarts": session.restarts,
            "pid": proc.pid if proc is not None else None,
            "memory_bytes": memory,
            "uptime_s": round(proc.uptime_s, 3) if proc is not None else None,
            "own_number": session.own_number,
            "desired_state": "running" if session.desired_running else "stopped",
            "qr_attempt": qr["attempt"] if qr else None,
            "last_exit_code": session.last_exit_code,
            "driver": session.driver,
        }

    def qr(self, tenant_id: str) -> dict[str, Any] | None:
        """The current QR ({qr, attempt, expires_at}) or None when none is showing."""
        session = self._sessions.get(tenant_id)
        return session.qr() if session is not None else None

    def is_ready(self, tenant_id: str) -> bool:
        session = self._sessions.get(tenant_id)
        return session is not None and session.is_ready

    def state(self, tenant_id: str) -> SessionState | None:
        session = self._sessions.get(tenant_id)
        return session.state if session is not None else None

    def pid(self, tenant_id: str) -> int | None:
        session = self._sessions.get(tenant_id)
        if session is None or session.proc is None or session.proc.exited:
            return None
        return session.proc.pid

    def browser_pid(self, tenant_id: str) -> int | None:
        session = self._sessions.get(tenant_id)
        return session.run_facts.browser_pid if session is not None and session.proc is not None else None

    # ------------------------------------------------------------------ bridge commands
    def _live(self, tenant_id: str) -> TenantSession:
        paths.validate_tenant_id(tenant_id)
        session = self._sessions.get(tenant_id)
        if session is None:
            raise sup_errors.SessionNotReady(tenant_id, "stopped", "no WhatsApp session runs for this tenant")
        return session

    async def send(self, tenant_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """The bridge's ``send`` command -> {id, timestamp}. Raises SessionNotReady when not ready,
        BridgeCommandError when the bridge refuses, BridgeUnavailable (ambiguous) when it dies or
        does not answer."""
        session = self._live(tenant_id)
        if not session.is_ready:
            raise sup_errors.SessionNotReady(tenant_id, session.state.value)
        return await bridge_request(
            session, protocol.CMD_SEND, args, timeout_s=SEND_TIMEOUT_S, ambiguous=True
        )

    async def mark_read(self, tenant_id: str, chat_id: str) -> None:
        session = self._live(tenant_id)
        if not session.is_ready:
            raise sup_errors.SessionNotReady(tenant_id, session.state.value)
        await bridge_request(
            session,
            protocol.CMD_MARK_READ,
            {"chat_id": chat_id},
            timeout_s=COMMAND_TIMEOUT_S,
            ambiguous=False,
        )

    async def sandbox(self, tenant_id: str, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """A ``sandbox.*`` command (``scan`` or ``sandbox.scan``) to a scripted-driver bridge."""
        name = cmd if cmd.startswith("sandbox.") else f"sandbox.{cmd}"
        if name not in protocol.SANDBOX_COMMAND_NAMES:
            raise errors.InvalidInput(f"unknown sandbox command {cmd!r}", code="unknown_sandbox_command")
        session = self._live(tenant_id)
        if session.driver != "scripted":
            raise sup_errors.NotSandbox("sandbox commands need a sandbox tenant (scripted driver)")
        return await bridge_request(session, name, args or {}, timeout_s=COMMAND_TIMEOUT_S, ambiguous=False)

    def add_message_listener(self, listener: MessageListener) -> None:
        """``await listener(tenant_id, event_name, data)`` for each bridge event about messages and chats
        (``protocol.FORWARDED_EVENTS``), in order. Events that arrive before the first listener is
        added are kept (up to MESSAGE_BACKLOG)."""
        self._messages.add_listener(listener)

    # ------------------------------------------------------------------ outbound (one boundary)
    def bridge_argv(self, tenant_id: str, folder: Path, driver: str) -> list[str]:
        s = self.settings
        return [
            s.node_path,
            str(s.bridge_script),
            "--tenant",
            tenant_id,
            "--session-dir",
            str(folder),
            "--driver",
            driver,
            "--heartbeat-ms",
            str(max(10, round(s.heartbeat_interval_s * 1000))),
            "--qr-interval-ms",
            str(max(10, round(s.qr_interval_s * 1000))),
            "--stop-timeout-ms",
            str(max(1, round(s.stop_wait_s * 800))),
        ]

    # SessionHost: what a session hands back (see host.py)
    def record_state(self, tenant_id: str, snapshot: dict[str, Any], event: dict[str, Any] | None) -> None:
        self._states.record(tenant_id, snapshot, event)

    def publish(self, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
        self._states.publish(tenant_id, type_, data)

    def dispatch_message(self, tenant_id: str, name: str, data: dict[str, Any]) -> None:
        self._messages.dispatch(tenant_id, name, data)

    # ------------------------------------------------------------------ watchdogs
    def watch(self, session: TenantSession) -> None:
        """From spawn to exit, the session's bridge is checked by the watchdog sweep."""
        self._watched[session.tenant_id] = session

    def unwatch(self, session: TenantSession) -> None:
        if self._watched.get(session.tenant_id) is session:
            del self._watched[session.tenant_id]

    async def _watchdog_loop(self) -> None:
        """Heartbeat watchdog, start timeout and QR lifetime of every live bridge, in one sweep per
        ``watchdog_period_s`` (heartbeats only stamp ``last_seen``; see TenantSession.sweep)."""
        period = self.watchdog_period_s
        while True:
            await asyncio.sleep(period)
            if not self._watched:
                continue
            now, wall_ms = self.clock(), self.wall_clock() * 1000
            next_sweep = now + period
            # Heard from since then and ready: no deadline before the next sweep (the common case,
            # decided without a call).
            quiet_since = next_sweep - 2 * self.settings.heartbeat_interval_s
            for session in list(self._watched.values()):
                if session.run_facts.last_seen > quiet_since and session.machine.state is S.READY:
                    continue
                try:
                    session.sweep(now, wall_ms, next_sweep)
                except Exception:
                    log.exception("watchdog check failed tenant=%s", session.tenant_id)

    async def _memory_loop(self) -> None:
        limit = self.settings.memory_limit_mb * 1024 * 1024
        while True:
            await asyncio.sleep(self.settings.memory_check_interval_s)
            trees = {tid: roots for tid, s in list(self._sessions.items()) if (roots := s.memory_roots())}
            if not trees:
                continue
            try:
                verdicts = await asyncio.to_thread(policy.check_memory, trees, limit)
            except Exception:
                log.exception("memory check failed")
                continue
            for verdict in verdicts:
                session = self._sessions.get(verdict.tenant_id)
                if session is None:
                    continue
                session.run_facts.memory_bytes = verdict.bytes
                if verdict.over and session.proc is not None and not session.acting:
                    log.warning(
                        "memory %d MB over the %d MB limit: restarting tenant=%s",
                        verdict.bytes // 2**20,
                        self.settings.memory_limit_mb,
                        verdict.tenant_id,
                    )
                    session.request("kill", "memory_limit")
