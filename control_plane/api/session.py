"""``/api/session``: the tenant's WhatsApp Web session (start, stop, restart, logout, status, QR).
Served with the tenant's API key and, for the admin, under ``/api/tenants/{tenant_id}/session``."""

from __future__ import annotations

import functools
import io
import logging
from typing import Any, Literal

import segno
from aiohttp import web
from pydantic import Field

from control_plane import errors
from control_plane.http.models import QueryModel, ResponseModel
from control_plane.http.routing import Router

log = logging.getLogger(__name__)
TAGS = ("session",)
router = Router(tags=TAGS, auth="tenant")

State = Literal[
    "stopped",
    "starting",
    "qr",
    "authenticated",
    "ready",
    "disconnected",
    "backoff",
    "failed",
    "stopping",
    "logged_out",
]


class SessionStatus(ResponseModel):
    state: State
    reason: str | None = Field(
        default=None,
        description="Why it is in this state (crash_loop, qr_expired, "
        "memory_limit, heartbeat_timeout, init_failed, requested, ...)",
    )
    detail: str | None = Field(
        default=None,
        description='The reason in words an admin can act on, e.g. "cannot reach web.whatsapp.com: this '
        'server cannot resolve the name (DNS); check its internet access, DNS resolver or proxy" '
        "(null when there is nothing to do)",
    )
    error: str | None = Field(
        default=None,
        description="The technical text behind the reason, as the session reported it, e.g. "
        '"initialize failed: net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/"',
    )
    since: str | None = Field(default=None, description="When it entered this state (ISO 8601, UTC)")
    desired_state: Literal["running", "stopped"] = Field(
        description="What was asked last: the state the session is moving to (start/stop/restart "
        "answer at once with 202; follow `state` or the session.state events)"
    )
    restarts: int = Field(description="Automatic restarts so far")
    pid: int | None = Field(default=None, description="The bridge's process id while one runs")
    memory_bytes: int | None = Field(
        default=None, description="PSS of the bridge's process tree, browser included"
    )
    uptime_s: float | None = None
    own_number: str | None = Field(default=None, description="The linked phone number, once ready")
    qr_attempt: int | None = Field(default=None, description="Number of the QR code showing now")
    last_exit_code: int | None = None
    driver: Literal["wwebjs", "scripted"] | None = None


class QRQuery(QueryModel):
    format: Literal["png", "svg", "json"] = "png"
    scale: int = Field(default=6, ge=1, le=20, description="Pixels per module (png, svg)")


class QROut(ResponseModel):
    qr: str = Field(description="The raw string to encode (what WhatsApp shows as a QR code)")
    attempt: int
    expires_at: str = Field(description="When this code stops being valid (ISO 8601, UTC)")


def supervisor_of(request: web.Request) -> Any:
    supervisor = request.app.get("supervisor")
    if supervisor is None:
        # 409, not 503: this is the server's configuration, not an outage that retrying would outlast.
        raise errors.Conflict(
            "WhatsApp Web sessions are disabled on this server (SUPERVISOR_ENABLED=false)",
            code="supervisor_disabled",
        )
    return supervisor


def _tenant_id(request: web.Request) -> str:
    return request["tenant"]["id"]


# The routes that answer with the session's status: the same answer and errors.
_session_route = functools.partial(router.route, response=SessionStatus, errors=(409, 503))


@_session_route(
    "GET",
    "/api/session",
    summary="The session's state, reason, restarts, process, memory and own number",
)
async def get_session(request: web.Request) -> SessionStatus:
    return SessionStatus(**await supervisor_of(request).status(_tenant_id(request)))


def _command(command: str, summary: str, *, status: int = 200) -> None:
    """Declare ``POST /api/session/<command>``: the supervisor's ``<command>`` for this tenant, answered
    with the session's status. ``<command>_session`` names the operation (its OpenAPI operationId)."""

    async def handler(request: web.Request) -> SessionStatus:
        return SessionStatus(**await getattr(supervisor_of(request), command)(_tenant_id(request)))

    handler.__name__ = handler.__qualname__ = f"{command}_session"
    _session_route("POST", f"/api/session/{command}", status=status, summary=summary)(handler)


_command(
    "start",
    "Start the session (desired state running); answered at once, the start goes on in the background",
    status=202,
)
_command(
    "stop",
    "Stop the session (desired state stopped); answered at once, the stop goes on in the background",
    status=202,
)
_command("restart", "Restart the session now (also clears a failed state); answered at once", status=202)
_command("logout", "Log out of WhatsApp and wipe the session profile (a new QR scan is needed)")


@router.route(
    "GET",
    "/api/session/qr",
    query=QRQuery,
    response=QROut,
    errors=(404, 409, 503),
    produces=("application/json", "image/png", "image/svg+xml"),
    summary="The QR code to scan: PNG, SVG, or JSON with the raw string (404 when none is showing)",
)
async def get_qr(request: web.Request, query: QRQuery) -> Any:
    current = supervisor_of(request).qr(_tenant_id(request))
    if current is None:
        raise errors.NotFound(
            "no QR code is showing: start the session and wait for state 'qr'", code="qr_not_available"
        )
    if query.format == "json":
        return QROut(**current)
    code = segno.make(current["qr"], error="l")
    buf = io.BytesIO()
    if query.format == "png":
        code.save(buf, kind="png", scale=query.scale, border=4)
        content_type = "image/png"
    else:
        code.save(buf, kind="svg", scale=query.scale, border=4, xmldecl=False)
        content_type = "image/svg+xml"
    headers = {
        "Cache-Control": "no-store",
        "X-QR-Attempt": str(current["attempt"]),
        "X-QR-Expires-At": current["expires_at"],
    }
    return web.Response(body=buf.getvalue(), content_type=content_type, headers=headers)
