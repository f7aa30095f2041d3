"""Who may connect to the relay, and from which seq each of its tenants' delivery starts.

Connect with ``auth: {token, since?, tenant_id?, tenants?}``:
- a tenant API key joins that tenant's room only (``since``: an integer);
- the admin token joins ``tenant_id`` / ``tenants`` (``since``: an integer for all of them, or a
  ``{tenant_id: seq}`` map), or every tenant when neither is given (``since`` is refused there);
- the admin panel's session cookie stands in for the admin token on a same-origin connection;
- missing or wrong credentials, revoked keys and deactivated tenants are refused with
  ``{message, data: {code}}``;
- every presented token goes through the authentication throttle (``control_plane/auth_throttle.py``,
  shared with the HTTP API): while the client's address or the token's prefix must wait, the connect
  is refused with ``{code: "too_many_attempts", retry_after: <seconds>}`` before the token is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from socketio.exceptions import ConnectionRefusedError as Refused

from control_plane import admin_cookie as admin_session
from control_plane import forwarded
from control_plane.auth_throttle import Attempt, AuthThrottle
from control_plane.config import Settings
from control_plane.crypto import hash_api_key, tokens_equal
from control_plane.db import events as events_db
from control_plane.db import tenants as tenants_db
from control_plane.db.engine import Database
from control_plane.errors import TooManyAttempts

__all__ = ["Grant", "Refused", "authorize", "refuse"]


@dataclass(frozen=True)
class Grant:
    """What a connection may receive: ``tenants`` (None: every tenant, admin only), where each
    tenant's delivery starts, and the API key's digest (None for the admin)."""

    tenants: frozenset[str] | None
    cursors: dict[str, int]
    key_hash: str | None


def refuse(message: str, code: str) -> Refused:
    return Refused(message, {"code": code})


async def authorize(
    db: Database, settings: Settings, environ: dict, auth: Any, throttle: AuthThrottle
) -> Grant:
    """The connection's :class:`Grant`, or raise a refusal."""
    if auth is None:
        auth = {}
    if not isinstance(auth, dict):
        raise refuse("auth must be an object: {token, since?}", "invalid_auth")
    token = auth.get("token") or _bearer(environ)
    if not token and _admin_panel_session(environ):
        return await _authorize_admin(db, auth, auth.get("since"))
    if not isinstance(token, str) or not token:
        raise refuse("missing credentials: connect with auth: {token: '<api key>'}", "missing_credentials")
    since = auth.get("since")
    attempt = await _admit(throttle, _client(environ, settings), token)
    if tokens_equal(token, settings.admin_token.get()):
        await throttle.succeeded(attempt)
        return await _authorize_admin(db, auth, since)
    async with db.connect() as conn:
        tenant = await tenants_db.find_tenant_by_api_key(conn, token)
        if tenant is None:
            await throttle.failed(attempt)
            raise refuse("invalid or revoked API key", "invalid_credentials")
        await throttle.succeeded(attempt)
        if not tenant["is_active"]:
            raise refuse("this tenant is deactivated", "tenant_inactive")
        if auth.get("tenant_id") not in (None, tenant["id"]) or auth.get("tenants") is not None:
            raise refuse("a tenant API key subscribes to its own tenant only", "forbidden")
        cursors = await _cursors(conn, [tenant["id"]], since)
    return Grant(frozenset([tenant["id"]]), cursors, hash_api_key(token))


async def _authorize_admin(db: Database, auth: dict, since: Any) -> Grant:
    wanted = auth.get("tenants")
    if auth.get("tenant_id") is not None:
        wanted = [auth["tenant_id"]]
    if wanted is None:
        if since is not None:
            raise refuse("'since' needs tenant_id or tenants (replay is per tenant)", "invalid_since")
        return Grant(None, {}, None)
    if not isinstance(wanted, list) or not wanted or not all(isinstance(t, str) for t in wanted):
        raise refuse("tenants must be a non-empty list of tenant ids", "invalid_tenants")
    async with db.connect() as conn:
        for tenant_id in wanted:
            tenant = await tenants_db.get_tenant(conn, tenant_id) if len(tenant_id) <= 32 else None
            if tenant is None:
                raise refuse(f"tenant {tenant_id!r} not found", "tenant_not_found")
        cursors = await _cursors(conn, wanted, since)
    return Grant(frozenset(wanted), cursors, None)


async def _cursors(conn: Any, tenant_ids: list[str], since: Any) -> dict[str, int]:
    """Where each tenant's delivery starts: ``since``, or (live only) the tenant's latest seq,
    read before joining the room, so events committed while connecting are not lost."""
    cursors: dict[str, int] = {}
    for tenant_id in tenant_ids:
        value = since.get(tenant_id) if isinstance(since, dict) else since
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise refuse("since must be a non-negative integer (the last seq you received)", "invalid_since")
        latest = await events_db.last_seq(conn, tenant_id)
        # A since beyond the latest seq (a client that outlived a database restore) restarts
        # from the latest: better a repeat than a silent loss.
        cursors[tenant_id] = latest if value is None else min(value, latest)
    return cursors


async def _admit(throttle: AuthThrottle, client: str, token: str) -> Attempt:
    try:
        return await throttle.attempt(client, token)
    except TooManyAttempts as exc:
        raise Refused(exc.message, {"code": exc.code, "retry_after": exc.retry_after}) from None


def _client(environ: dict, settings: Settings) -> str:
    """The client's address (through ``TRUSTED_PROXIES``) from the handshake's aiohttp request."""
    request = environ.get("aiohttp.request")
    if request is None:
        return environ.get("REMOTE_ADDR") or forwarded.UNKNOWN
    return forwarded.client_address(request, settings.trusted_proxies)


def _bearer(environ: dict) -> str | None:
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _admin_panel_session(environ: dict) -> bool:
    """The admin panel's signed session cookie (HttpOnly, SameSite=Strict; see
    control_plane/admin_cookie.py) stands in for the admin token on a same-origin connection that
    sends no token."""
    request = environ.get("aiohttp.request")
    if request is None:
        return False
    signer = request.app.get("admin_sessions")
    if signer is None:
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin and urlsplit(origin).netloc != environ.get("HTTP_HOST"):
        return False
    return signer.verify(request.cookies.get(admin_session.COOKIE_NAME)) is not None
