"""Who is calling: the admin token (or the admin panel's session cookie), or a tenant's API key
(resolved to that tenant only). ``authenticate`` is the app's ``routing.Authenticator``.

Every presented bearer token goes through the authentication throttle (``app["auth_throttle"]``,
see ``control_plane/auth_throttle.py``) keyed by the client's address as ``TRUSTED_PROXIES`` lets
us see it (``control_plane/forwarded.py``): a client guessing tokens is answered 429
``too_many_attempts`` with ``Retry-After`` for a while, whatever it presents."""

from __future__ import annotations

from aiohttp import web

from control_plane import admin_cookie as admin_session
from control_plane import errors, forwarded
from control_plane.auth_throttle import AuthThrottle
from control_plane.crypto import tokens_equal
from control_plane.db import tenants as tenants_db
from control_plane.db import utcnow
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
    """The tenant of this live API key, or None. The key's last use is noted, at most once a minute
    (``tenants_db.LAST_USED_RESOLUTION``): the lookup reads when it was last noted, so most requests
    write nothing."""
    async with request.app["db"].connect() as conn:
        found = await tenants_db.find_api_key_owner(conn, token)
    if found is None:
        return None
    tenant, key = found
    now = utcnow()
    if tenants_db.api_key_use_is_stale(key["last_used_at"], now):
        async with request.app["db"].begin() as conn:
            await tenants_db.note_api_key_use(conn, tenant["id"], key["id"], now)
    return tenant


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


def client_address(request: web.Request) -> str:
    """The client's address, through the trusted proxies (``TRUSTED_PROXIES``)."""
    return forwarded.client_address(request, request.app["settings"].trusted_proxies)


async def identify(request: web.Request, token: str) -> dict | bool | None:
    """What ``token`` is: True (the admin token), the tenant row of its API key, or None (wrong or
    revoked). Throttled per client address and token prefix (``auth_throttle.py``): raises
    ``TooManyAttempts`` (429 + Retry-After) while either must wait, before looking at the token."""
    throttle: AuthThrottle = request.app["auth_throttle"]
    attempt = await throttle.attempt(client_address(request), token)
    who: dict | bool | None = True if is_admin_token(request, token) else await tenant_for_key(request, token)
    if who is None:
        await throttle.failed(attempt)
    else:
        await throttle.succeeded(attempt)
    return who


def _missing(what: str) -> errors.Unauthenticated:
    message = f"missing 'Authorization: Bearer <{what}>' header"
    return errors.Unauthenticated(message, code="missing_credentials")


def _use_tenant(request: web.Request, who: dict | bool | None) -> None:
    if not isinstance(who, dict):  # the admin token is no tenant's key either
        raise errors.Unauthenticated("invalid or revoked API key", code="invalid_credentials")
    if not who["is_active"]:
        raise errors.Forbidden(
            "this tenant is deactivated; ask an administrator to reactivate it", code="tenant_inactive"
        )
    _set_tenant(request, who)


async def _require_admin(request: web.Request, token: str | None) -> None:
    if token is None:
        if not admin_panel_session(request):
            raise _missing("admin token")
    else:
        who = await identify(request, token)
        if who is None:
            raise errors.Unauthenticated("invalid admin token", code="invalid_credentials")
        if who is not True:
            raise errors.Forbidden(
                "this route needs the admin token, not a tenant API key", code="admin_required"
            )
    request["is_admin"] = True


async def authenticate(request: web.Request, mode: AuthMode) -> None:
    """Enforce ``mode`` ("none", "admin", "tenant", "admin_for_tenant", "admin_or_tenant")."""
    request["is_admin"] = False
    if mode == "none":
        return
    token = bearer_token(request)
    if mode == "tenant":
        if token is None:
            raise _missing("api key")
        _use_tenant(request, await identify(request, token))
    elif mode == "admin":
        await _require_admin(request, token)
    elif mode == "admin_for_tenant":
        await _require_admin(request, token)
        _set_tenant(request, await load_tenant(request, request.match_info["tenant_id"]))
    elif mode == "admin_or_tenant":
        if token is None:
            if not admin_panel_session(request):
                raise _missing("api key")
            request["is_admin"] = True
            return
        who = await identify(request, token)
        if who is True:
            request["is_admin"] = True
        else:
            _use_tenant(request, who)
    else:  # pragma: no cover - programming error
        raise AssertionError(f"unknown auth mode {mode}")
