"""Admin panel pages under ``/admin``: login/logout, the tenants list and a tenant's page.

Pages are rendered server-side (Jinja2, autoescaped) with the facts known at render time; the page
scripts then keep them live from Socket.IO events and change things through the same JSON API the
CRM uses (``/api/tenants/...``), authenticated by the admin session cookie plus its CSRF header
(see ``control_plane/admin_cookie.py`` and ``http.auth.admin_panel_session``). No page loads anything
from another origin.
"""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from control_plane import admin_cookie as sess
from control_plane import forwarded
from control_plane.auth_throttle import AuthThrottle
from control_plane.crypto import tokens_equal
from control_plane.db import tenants as tenants_db
from control_plane.db import whatsapp_config as config_db
from control_plane.errors import TooManyAttempts
from control_plane.http.auth import TENANT_ID_RE, client_address
from control_plane.messaging.whatsapp_config import config_out

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATIC_PREFIX = "/admin/static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
routes = web.RouteTableDef()


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}"
    env.filters["bytes"] = format_bytes
    env.filters["phone"] = format_phone
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    html = request.app["admin_jinja"].get_template(template).render(**context)
    resp = web.Response(text=html, status=status, content_type="text/html")
    resp.headers.update(
        {
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    return resp


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


# --- sessions -----------------------------------------------------------------------------------


def signer(request: web.Request) -> sess.SessionSigner:
    return request.app["admin_sessions"]


def current_session(request: web.Request) -> sess.AdminSession | None:
    return signer(request).verify(request.cookies.get(sess.COOKIE_NAME))


def _set_cookie(request: web.Request, resp: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, and Secure when the browser speaks HTTPS: to us, or to a trusted proxy
    that says so (``X-Forwarded-Proto: https`` from a ``TRUSTED_PROXIES`` peer)."""
    secure = forwarded.is_https(request, request.app["settings"].trusted_proxies)
    resp.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=secure)


def _safe_next(target: str | None) -> str:
    """Only a local admin path (no scheme, no host, no ``//``) may be a redirect target."""
    if target and target.startswith("/admin/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin/tenants"


def require_session(request: web.Request) -> sess.AdminSession:
    session = current_session(request)
    if session is None:
        raise web.HTTPFound(f"/admin/login?next={quote(request.path_qs, safe='')}")
    return session


def page_context(request: web.Request, session: sess.AdminSession, **extra: Any) -> dict[str, Any]:
    return {"csrf_token": signer(request).csrf_token(session), "csrf_field": sess.CSRF_FIELD, **extra}


# --- login / logout -----------------------------------------------------------------------------


def _login_page(
    request: web.Request, *, status: int = 200, error: str | None = None, notice: str | None = None
) -> web.Response:
    nonce = sess.new_login_nonce()
    resp = render(
        request,
        "login.html",
        status=status,
        error=error,
        notice=notice,
        next=_safe_next(request.query.get("next")),
        csrf_field=sess.CSRF_FIELD,
        csrf_token=signer(request).login_csrf_token(nonce),
    )
    _set_cookie(request, resp, sess.LOGIN_COOKIE_NAME, nonce, sess.LOGIN_TTL_S)
    return resp


@routes.get("/admin")
@routes.get("/admin/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/admin/tenants" if current_session(request) else "/admin/login")


@routes.get("/admin/login")
async def login_form(request: web.Request) -> web.Response:
    if current_session(request) is not None:
        raise web.HTTPFound(_safe_next(request.query.get("next")))
    notice = "You are logged out." if "logged_out" in request.query else None
    return _login_page(request, notice=notice)


@routes.post("/admin/login")
async def login(request: web.Request) -> web.Response:
    """The admin token, through the authentication throttle the API uses (``auth_throttle.py``): after
    a few wrong tokens each attempt waits a little longer (1, 2, 4 ... 30 s); the right token after
    the current wait logs in and clears the address's failures."""
    form = await request.post()
    csrf_ok = signer(request).check_login_csrf(
        request.cookies.get(sess.LOGIN_COOKIE_NAME), str(form.get(sess.CSRF_FIELD, ""))
    )
    if not csrf_ok:
        log.warning("admin login refused: missing or stale login form token")
        return _login_page(
            request, status=403, error="This login form expired. Please enter the token again."
        )
    token = str(form.get("token", "")).strip()
    client = client_address(request)
    try:
        correct = bool(token) and await _check_admin_token(request, client, token)
    except TooManyAttempts as exc:
        log.warning("admin login refused: too many wrong tokens from %s", client)
        wait = f"Too many wrong tokens. Try again in {exc.retry_after} seconds."
        resp = _login_page(request, status=429, error=wait)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    if not correct:
        log.warning("admin login refused: wrong admin token from %s", client)
        return _login_page(
            request, status=401, error="That admin token is not correct. Check ADMIN_TOKEN and try again."
        )
    cookie, _ = signer(request).issue()
    resp = see_other(_safe_next(str(form.get("next", ""))))
    _set_cookie(request, resp, sess.COOKIE_NAME, cookie, sess.SESSION_TTL_S)
    resp.del_cookie(sess.LOGIN_COOKIE_NAME, path="/")
    log.info("admin logged in from %s", client)
    return resp


async def _check_admin_token(request: web.Request, client: str, token: str) -> bool:
    """Whether ``token`` is the admin token; raises ``TooManyAttempts`` while the client must wait."""
    throttle: AuthThrottle = request.app["auth_throttle"]
    attempt = await throttle.attempt(client, token)
    correct = tokens_equal(token, request.app["settings"].admin_token.get())
    await (throttle.succeeded(attempt) if correct else throttle.failed(attempt))
    return correct


@routes.post("/admin/logout")
async def logout(request: web.Request) -> web.Response:
    session = current_session(request)
    form = await request.post()
    if session is not None:
        if not signer(request).check_csrf(session, str(form.get(sess.CSRF_FIELD, ""))):
            return render(
                request,
                "message.html",
                status=403,
                title="Not logged out",
                message="Logging out needs the page's CSRF token: go back, reload and try again.",
            )
        signer(request).revoke(session)
    resp = see_other("/admin/login?logged_out=1")
    resp.del_cookie(sess.COOKIE_NAME, path="/")
    return resp


# --- pages --------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Datetimes (naive UTC) as ISO strings, so page data can go through ``tojson``."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, enum.Enum):
        return value.value
    return value


async def session_status(app: web.Application, tenant_id: str) -> dict[str, Any] | None:
    """The supervisor's view of a tenant's session (None when no supervisor runs in this process)."""
    supervisor = app.get("supervisor")
    if supervisor is None:
        return None
    result = supervisor.status(tenant_id)
    if inspect.isawaitable(result):
        result = await result
    return jsonable(dict(result)) if result else None


async def session_qr(app: web.Application, tenant_id: str) -> dict[str, Any] | None:
    supervisor = app.get("supervisor")
    if supervisor is None:
        return None
    result = supervisor.qr(tenant_id)
    if inspect.isawaitable(result):
        result = await result
    return jsonable(dict(result)) if result else None


def roads(config: dict[str, Any]) -> list[str]:
    """Which ways out a tenant has: the Web session and/or the Business (Cloud) API."""
    found = []
    if config["api_type"] in ("web", "both"):
        found.append("Web")
    if config["api_type"] in ("business_api", "both") and config["business_api_ready"]:
        found.append("Business API")
    return found


def _first(status: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if status.get(key) is not None:
            return status[key]
    return None


def session_facts(status: dict[str, Any] | None) -> dict[str, Any]:
    """The facts the pages show, in one shape whatever optional keys the supervisor's status has
    (admin.js ``sessionFacts`` is its twin)."""
    status = status or {}
    memory = _first(status, "memory_bytes", "rss_bytes", "memory_rss_bytes", "memory")
    if memory is None and status.get("memory_mb") is not None:
        memory = status["memory_mb"] * 1024 * 1024
    own = _first(status, "own_number", "number", "phone")
    return {
        "state": status.get("state") or "unknown",
        "reason": status.get("reason"),
        "detail": status.get("detail"),
        "own_number": own,
        "restarts": _first(status, "restarts", "restart_count"),
        "memory_bytes": memory,
    }


def format_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    value, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"


def format_phone(number: Any) -> str:
    digits = "".join(ch for ch in str(number or "").split("@")[0] if ch.isdigit())
    return f"+{digits}" if digits else "—"


async def tenant_summary(request: web.Request, tenant: dict[str, Any], config_row: dict | None) -> dict:
    config = config_out(config_row).model_dump(mode="json")
    status = await session_status(request.app, tenant["id"])
    return {
        "id": tenant["id"],
        "name": tenant["name"],
        "sandbox": bool(tenant["sandbox"]),
        "is_active": bool(tenant["is_active"]),
        "roads": roads(config),
        "session": status,
        "facts": session_facts(status),
    }


@routes.get("/admin/tenants")
async def tenants_page(request: web.Request) -> web.Response:
    session = require_session(request)
    async with request.app["db"].connect() as conn:
        tenants = await tenants_db.list_tenants(conn)
        configs = {t["id"]: await config_db.get_whatsapp_config(conn, t["id"]) for t in tenants}
    rows = [await tenant_summary(request, t, configs[t["id"]]) for t in tenants]
    return render(request, "tenants.html", **page_context(request, session, tenants=rows, page="tenants"))


@routes.get("/admin/tenants/{tenant_id}")
async def tenant_page(request: web.Request) -> web.Response:
    session = require_session(request)
    tenant_id = request.match_info["tenant_id"]
    tenant = None
    if TENANT_ID_RE.match(tenant_id):
        async with request.app["db"].connect() as conn:
            tenant = await tenants_db.get_tenant(conn, tenant_id)
            config_row = await config_db.get_whatsapp_config(conn, tenant_id) if tenant else None
    if tenant is None:
        return render(
            request,
            "message.html",
            status=404,
            title="Tenant not found",
            message=f"There is no tenant {tenant_id}.",
            **page_context(request, session),
        )
    summary = await tenant_summary(request, tenant, config_row)
    data = {
        "tenant": summary,
        "config": config_out(config_row).model_dump(mode="json"),
        "qr": await session_qr(request.app, tenant_id),
        "qr_ttl_s": request.app["settings"].qr_ttl_s,
    }
    return render(
        request, "tenant.html", **page_context(request, session, tenant=summary, data=data, page="tenant")
    )


def setup(app: web.Application) -> None:
    """Register the admin pages, their static files, the Jinja2 environment and the session signer."""
    settings = app["settings"]
    app["admin_jinja"] = make_environment()
    app["admin_sessions"] = sess.SessionSigner(settings.secret_key.get(), settings.admin_token.get())
    app.router.add_routes(routes)
    app.router.add_static(STATIC_PREFIX, HERE / "static", name="admin_static", append_version=False)
