"""Commands to a session's live bridge (``send``, ``mark_read``, ``sandbox.*``), with the bridge's
failures translated to supervisor errors (``supervisor/errors.py``)."""

from __future__ import annotations

from typing import Any

from control_plane.supervisor import errors as sup_errors
from control_plane.supervisor.session import TenantSession
from control_plane.supervisor.states import LIVE, SessionState


async def bridge_request(
    session: TenantSession, cmd: str, args: dict[str, Any], *, timeout_s: float, ambiguous: bool
) -> dict[str, Any]:
    """``cmd`` to the session's live bridge; SessionNotReady when none runs."""
    proc, state = session.proc, session.state
    if (
        proc is None
        or proc.exited
        or proc.conn is None
        or state not in LIVE
        or state is SessionState.STOPPING
    ):
        raise sup_errors.SessionNotReady(
            session.tenant_id, state.value, f"no running WhatsApp session (state {state.value})"
        )
    try:
        return await proc.conn.request(cmd, args, timeout_s=timeout_s)
    except sup_errors.REQUEST_FAILURES as exc:
        raise sup_errors.from_request_failure(
            session.tenant_id, state.value, cmd, exc, timeout_s=timeout_s, ambiguous=ambiguous
        ) from None
