"""Who is calling: the admin token (or the admin panel's session cookie), or a tenant's API key
(resolved to that tenant only). ``authenticate`` is the app's ``routing.Authenticator``."""

from __future__ import annotations

from aiohttp import web

from control_plane import admin_cookie as admin_session
from control_plane import errors
from control_plane.crypto import tokens_equal
from control_plane.db import tenants as tenants_db
from control_plane.db.metadata import TENANT_ID_RE
from control_plane.http.routing import AuthMode
from control_plane.logs import current_tenant


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_admin_token(request: web.Request, token: str | None) -> bool:
    return token is not None and tokens_equal(token, request.app["settings"].admin_token.get())


def admin_panel_session(request: web.Request) -> bool:
    """The admin panel's session cookie stands in for the admin token when no Authorization header is
    sent: on safe methods as is, on unsafe ones only with its CSRF token in ``X-CSRF-Token`` (403
    otherwise). False when there is no valid session cookie."""
    signer = request.app.get("admin_sessions")
    session = signer.verify(request.cookies.get(admin_session.COOKIE_NAME)) if signer else None
    if session is None:
        return False
    if request.method in admin_session.SAFE_METHODS:
        return True
    if not signer.check_csrf(session, request.headers.get(admin_session.CSRF_HEADER)):
        raise errors.Forbidden(
            f"admin session: missing or wrong {admin_session.CSRF_HEADER} header", code="csrf_failed"
        )
    return True


async def tenant_for_key(request: web.Request, token: str) -> dict | None:
    async with request.app["db"].connect() as conn:
        return await tenants_db.find_tenant_by_api_key(conn, token)


async def load_tenant(request: web.Request, tenant_id: str) -> dict:
    """The tenant by id (admin paths); 404 when it does not exist or the id is malformed."""
    if not TENANT_ID_RE.match(tenant_id):
        raise errors.NotFound(f"tenant {tenant_id!r} not found", code="tenant_not_found")
    async with request.app["db"].connect() as conn:
        tenant = await tenants_db.get_tenant(conn, tenant_id)
    if tenant is None:
        raise errors.NotFound(f"tenant {tenant_id!r} not found", code="tenant_not_found")
    return tenant


def _set_tenant(request: web.Request, tenant: dict) -> None:
    request["tenant"] = tenant
    current_tenant.set(tenant["id"])


async def _require_tenant_key(request: web.Request, token: str | None) -> None:
    if token is None:
        raise errors.Unauthenticated(
            "missing 'Authorization: Bearer <api key>' header", code="missing_credentials"
        )
    tenant = await tenant_for_key(request, token)
    if tenant is None:
        raise errors.Unauthenticated("invalid or revoked API key", code="invalid_credentials")
    if not tenant["is_active"]:
        raise errors.Forbidden(
            "this tenant is deactivated; ask an administrator to reactivate it", code="tenant_inactive"
        )
    _set_tenant(request, tenant)


async def _require_admin(request: web.Request, token: str | None) -> None:
    if token is None and admin_panel_session(request):
        request["is_admin"] = True
        return
    if token is None:
        raise errors.Unauthenticated(
            "missing 'Authorization: Bearer <admin token>' header", code="missing_credentials"
        )
    if is_admin_token(request, token):
        request["is_admin"] = True
        return
    if await tenant_for_key(request, token) is not None:
        raise errors.Forbidden(
            "this route needs the admin token, not a tenant API key", code="admin_required"
        )
    raise errors.Unauthenticated("invalid admin token", code="invalid_credentials")


async def authenticate(request: web.Request, mode: AuthMode) -> None:
    """Enforce ``mode`` ("none", "admin", "tenant", "admin_for_tenant", "admin_or_tenant")."""
    request["is_admin"] = False
    if mode == "none":
        return
    token = bearer_token(request)
    if mode == "tenant":
        await _require_tenant_key(request, token)
    elif mode == "admin":
        await _require_admin(request, token)
    elif mode == "admin_for_tenant":
        await _require_admin(request, token)
        _set_tenant(request, await load_tenant(request, request.match_info["tenant_id"]))
    elif mode == "admin_or_tenant":
        if is_admin_token(request, token) or (token is None and admin_panel_session(request)):
            request["is_admin"] = True
        else:
            await _require_tenant_key(request, token)
    else:  # pragma: no cover - programming error
        raise AssertionError(f"unknown auth mode {mode}")
