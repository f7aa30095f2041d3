"""What one bridge process has said so far, and when, and what the watchdog makes of it.

A ``BridgeRun`` lives from one spawn to the next: the session replaces it before each start. Times
are on the session's monotonic clock (``now``) or wall clock in milliseconds (``wall_ms``, the unit
of the bridge's QR expiry); nothing here reads a clock itself, so the rules are tested with numbers.

Watchdog rules (``verdict``), judged on the last thing the bridge said:
    starting and silent for the start timeout      -> kill  start_timeout
    silent for two heartbeat intervals             -> kill  heartbeat_timeout
    showing a QR past QR_TTL_S since the first one,
    or the last allowed QR has expired             -> expire qr_expired
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.bridge import protocol
from control_plane.events import format_ts
from control_plane.supervisor import causes, paths, policy
from control_plane.supervisor.states import SessionState

log = logging.getLogger(__name__)
S = SessionState

STDERR_TAIL = 10
EPOCH = dt.datetime(1970, 1, 1)  # naive UTC, as format_ts takes it
DEADLINE_SLACK_S = 0.001  # a timer at the deadline itself must find it passed
# The bridge's `state` event -> the session state it moves to.
BRIDGE_STATES = {
    protocol.STATE_QR: S.QR,
    protocol.STATE_AUTHENTICATED: S.AUTHENTICATED,
    protocol.STATE_READY: S.READY,
    protocol.STATE_DISCONNECTED: S.DISCONNECTED,
}


@dataclass(frozen=True)
class ShownQr:
    """The QR code the bridge shows now."""

    qr: Any
    attempt: int
    expires_at: str  # format_ts
    expires_at_ms: int

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> ShownQr:
        expires_ms = int(data.get("expires_at") or 0)
        expires_at = EPOCH + dt.timedelta(milliseconds=expires_ms)  # exact: no float on the way
        return cls(data.get("qr"), int(data.get("attempt") or 0), format_ts(expires_at), expires_ms)

    def public(self) -> dict[str, Any]:
        """The ``session.qr`` payload and the answer of GET /api/session/qr."""
        return {"qr": self.qr, "attempt": self.attempt, "expires_at": self.expires_at}


@dataclass(eq=False)
class BridgeRun:
    """The facts of one bridge process (see the module docstring)."""

    tenant_id: str
    last_seen: float  # monotonic: the last line of any kind (heartbeats included)
    hello: bool = False
    browser_pid: int | None = None
    user_data_dir: Path | None = None
    fatal_code: str | None = None
    fatal_message: str | None = None  # the technical text of the fatal `error` event (or the spawn's)
    qr: ShownQr | None = None
    first_qr_at: float | None = None  # monotonic
    memory_bytes: int | None = None
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=STDERR_TAIL))

    # -- what the bridge says --
    def on_stderr(self, line: str) -> None:
        self.stderr_tail.append(line)
        if " level=error " in line or " level=warn " in line:
            log.warning("bridge: %s", line)
        else:
            log.debug("bridge: %s", line)

    def on_hello(self, data: dict[str, Any]) -> None:
        self.hello = True
        if data.get("browser_pid"):
            self.browser_pid = int(data["browser_pid"])

    def on_browser(self, data: dict[str, Any], folder: Path) -> None:
        if data.get("browser_pid"):
            self.browser_pid = int(data["browser_pid"])
        udd = data.get("user_data_dir")
        if isinstance(udd, str) and udd:
            if paths.inside(folder, udd):
                self.user_data_dir = Path(udd).resolve()
            else:
                log.error("bridge reported a profile outside its folder, ignored tenant=%s", self.tenant_id)

    def on_error(self, data: dict[str, Any]) -> None:
        log.warning(
            "bridge error code=%s fatal=%s message=%s tenant=%s",
            data.get("code"),
            data.get("fatal"),
            data.get("message"),
            self.tenant_id,
        )
        if data.get("fatal"):
            self.fatal_code = str(data.get("code") or "fatal")[:100]
            self.fatal_message = causes.clip(str(data.get("message") or "")) or None

    def why_it_ended(self) -> str | None:
        """The technical text of how this run ended: the fatal event's message, else the last error
        line on stderr (a Node crash before the protocol was up, ...)."""
        if self.fatal_message:
            return self.fatal_message
        errors = [line for line in self.stderr_tail if " level=error " in line or "Error" in line]
        return causes.clip(errors[-1]) if errors else None

    def show_qr(self, data: dict[str, Any], now: float) -> ShownQr:
        self.qr = ShownQr.from_event(data)
        if self.first_qr_at is None:
            self.first_qr_at = now
        return self.qr

    def qr_showing(self, wall_ms: float) -> ShownQr | None:
        """The QR unless it has expired (the caller checks that the session is in ``qr``)."""
        qr = self.qr
        return qr if qr is not None and qr.expires_at_ms > wall_ms else None

    # -- the watchdog --
    def deadline(
        self, state: SessionState, limits: policy.WatchdogLimits, now: float, wall_ms: float
    ) -> float:
        """When ``verdict`` would next act, judged on what the bridge last said (monotonic)."""
        if state is S.STARTING:
            deadline = self.last_seen + limits.start_timeout_s
        else:
            deadline = self.last_seen + 2 * limits.heartbeat_interval_s
        if state is S.QR and self.first_qr_at is not None:
            deadline = min(deadline, self.first_qr_at + limits.qr_ttl_s)
            qr = self.qr
            if qr is not None and qr.attempt >= limits.qr_max_cycles:
                deadline = min(deadline, now + (qr.expires_at_ms - wall_ms) / 1000)
        return deadline + DEADLINE_SLACK_S

    def verdict(
        self, state: SessionState, limits: policy.WatchdogLimits, now: float, wall_ms: float
    ) -> tuple[str, str] | None:
        """(request kind, reason) when the watchdog must act, else None."""
        if state is S.STARTING:
            # Loading the driver (whatsapp-web.js + puppeteer) blocks node's loop for a second or
            # two on a cold cache: while starting, silence is judged by the start timeout instead.
            if now - self.last_seen > limits.start_timeout_s:
                return "kill", "start_timeout"
            return None
        if policy.heartbeat_overdue(self.last_seen, limits.heartbeat_interval_s, now):
            return "kill", "heartbeat_timeout"
        if state is S.QR and self.first_qr_at is not None:
            qr = self.qr
            past_ttl = now - self.first_qr_at > limits.qr_ttl_s
            last_expired = (
                qr is not None and qr.attempt >= limits.qr_max_cycles and wall_ms > qr.expires_at_ms
            )
            if past_ttl or last_expired:
                return "expire", "qr_expired"
        return None
