"""The supervisor: one isolated bridge process per tenant, kept alive, never leaking a browser.

states.py   the session state machine (pure)
paths.py    SESSIONS_DIR/<tenant-id>/, validated, nothing escapes
process.py  mechanics: spawn, pipes, signals, wait, kill the group, free a Chromium profile
policy.py   backoff, crash-loop breaker, heartbeat watchdog, memory over the process tree
session.py  one tenant's runner (the only code that touches its child)
manager.py  the Supervisor (app["supervisor"]): commands, boot, shutdown, persistence, events
"""

from control_plane.supervisor.errors import (
    BridgeBadRequest,
    BridgeCommandError,
    BridgeRefused,
    BridgeUnavailable,
    NotSandbox,
    SessionNotReady,
    SupervisorClosed,
    SupervisorError,
)
from control_plane.supervisor.manager import SESSION_QR, SESSION_STATE, Supervisor
from control_plane.supervisor.paths import InvalidTenantId, UnsafeSessionPath
from control_plane.supervisor.states import DesiredState, SessionState

__all__ = [
    "SESSION_QR",
    "SESSION_STATE",
    "BridgeBadRequest",
    "BridgeCommandError",
    "BridgeRefused",
    "BridgeUnavailable",
    "DesiredState",
    "InvalidTenantId",
    "NotSandbox",
    "SessionNotReady",
    "SessionState",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorError",
    "UnsafeSessionPath",
]
