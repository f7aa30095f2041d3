"""What the supervisor raises. Each is a domain error, so the HTTP layer maps it without help::

SupervisorError (mixin: every error below)
├── SessionNotReady        (Conflict 409)     no ready session for this tenant
├── BridgeCommandError     the bridge answered ok:false (.bridge_code, .bridge_message)
│   ├── BridgeBadRequest   (InvalidInput 422) bad arguments (bridge code bad_request)
│   └── BridgeRefused      (Conflict 409)     anything else (invalid_state, not_on_whatsapp, ...)
├── BridgeUnavailable      (Unavailable 503)  the bridge died or timed out mid-command
│                                             (.ambiguous: it may have acted on it)
├── NotSandbox             (Forbidden 403)    sandbox command for a real WhatsApp session
└── SupervisorClosed       (Unavailable 503)  the control plane is shutting down
"""

from __future__ import annotations

from control_plane import errors
from control_plane.bridge import protocol


class SupervisorError(errors.GatewayError):
    """Base of every supervisor error (catch this to catch them all)."""


class SessionNotReady(SupervisorError, errors.Conflict):
    code = "session_not_ready"

    def __init__(self, tenant_id: str, state: str, message: str | None = None) -> None:
        super().__init__(message or f"the WhatsApp session is not ready (state {state})")
        self.tenant_id = tenant_id
        self.state = state


class BridgeCommandError(SupervisorError):
    code = "bridge_command_failed"

    def __init__(self, bridge_code: str, bridge_message: str) -> None:
        super().__init__(
            f"the session refused the command: {bridge_code}: {bridge_message}", code=f"bridge_{bridge_code}"
        )
        self.bridge_code = bridge_code
        self.bridge_message = bridge_message


class BridgeBadRequest(BridgeCommandError, errors.InvalidInput):
    pass


class BridgeRefused(BridgeCommandError, errors.Conflict):
    pass


class BridgeUnavailable(SupervisorError, errors.Unavailable):
    code = "bridge_unavailable"

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class NotSandbox(SupervisorError, errors.Forbidden):
    code = "not_sandbox"


class SupervisorClosed(SupervisorError, errors.Unavailable):
    code = "supervisor_closed"


def from_command_failure(tenant_id: str, state: str, exc: protocol.BridgeCommandFailed) -> SupervisorError:
    if exc.code == protocol.ERR_NOT_READY:
        return SessionNotReady(tenant_id, state, f"the WhatsApp session is not ready: {exc.message}")
    if exc.code == protocol.ERR_BAD_REQUEST:
        return BridgeBadRequest(exc.code, exc.message)
    return BridgeRefused(exc.code, exc.message)


# What a command to a live bridge may fail with, translated by ``from_request_failure``.
REQUEST_FAILURES = (protocol.BridgeCommandFailed, protocol.BridgeTimeout, protocol.BridgeClosed)


def from_request_failure(
    tenant_id: str,
    state: str,
    cmd: str,
    exc: protocol.BridgeError,
    *,
    timeout_s: float,
    ambiguous: bool,
) -> SupervisorError:
    """A bridge command that failed (one of REQUEST_FAILURES) as the supervisor error to raise."""
    if isinstance(exc, protocol.BridgeCommandFailed):
        return from_command_failure(tenant_id, state, exc)
    if isinstance(exc, protocol.BridgeTimeout):
        return BridgeUnavailable(
            f"the session did not answer {cmd} within {timeout_s:g}s", ambiguous=ambiguous
        )
    return BridgeUnavailable(f"the session ended during {cmd}", ambiguous=ambiguous)
