"""The supervisor: one isolated bridge process per tenant, kept alive, never leaking a browser.

states.py   the session state machine (pure)
paths.py    SESSIONS_DIR/<tenant-id>/, validated, nothing escapes
process.py  mechanics: spawn, pipes, signals, wait, kill the group, free a Chromium profile
policy.py   backoff, crash-loop breaker, heartbeat watchdog, memory over the process tree
bridge_run.py  what one bridge process said, and the watchdog's rules on it
mailbox.py  what a runner is asked to do (the strongest request wins)
host.py     SessionHost: what a session needs from its supervisor (a Protocol)
session.py  one tenant's runner (the only code that touches its child)
outbound.py the state writer (persist, then publish) and the message dispatcher
manager.py  the Supervisor (app["supervisor"]): commands, boot, shutdown, the watchdog loops
"""

from control_plane.events import SESSION_QR, SESSION_STATE
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
from control_plane.supervisor.manager import Supervisor
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
