"""The application factory. One cleanup context per resource, in dependency order:
database -> Redis -> realtime -> supervisor -> dispatchers; teardown runs in reverse, so bridges
stop before the database closes."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from control_plane import realtime
from control_plane.admin import views as admin_views
from control_plane.api import (
    conversations,
    events,
    health,
    messages,
    openapi,
    sandbox,
    session,
    templates,
    tenants,
    whatsapp_config,
)
from control_plane.auth_throttle import AuthThrottle, Policy
from control_plane.config import Settings, mask_url
from control_plane.crypto import SecretBox
from control_plane.db import Database
from control_plane.http import auth
from control_plane.http.errors import error_middleware
from control_plane.http.routing import Router
from control_plane.logs import current_tenant
from control_plane.messaging import dispatcher_context
from control_plane.messaging.inbound import inbound_context
from control_plane.messaging.whatsapp_config import upgrade_verify_token_hashes_soon
from control_plane.providers.cloud_api import CloudAPIClient
from control_plane.supervisor import Supervisor
from control_plane.webhooks import routes as webhooks

log = logging.getLogger(__name__)
access_log = logging.getLogger("control_plane.access")


@web.middleware
async def access_middleware(request: web.Request, handler):
    """One access line per request, with its latency and (when known) its tenant."""
    token = current_tenant.set(None)
    if not access_log.isEnabledFor(logging.INFO):  # no line to write: nothing to measure
        try:
            return await handler(request)
        finally:
            current_tenant.reset(token)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        tenant = request.get("tenant")
        access_log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            status,
            elapsed_ms,
            extra={"tenant_id": tenant["id"] if tenant else None},
        )
        current_tenant.reset(token)


def build_router() -> Router:
    router = Router()
    for module in (
        health,
        tenants,
        whatsapp_config,
        events,
        webhooks,
        templates,
        session,
        sandbox,
        messages,
        conversations,
    ):
        router.include(module.router)
    return router


async def _database(app: web.Application):
    settings: Settings = app["settings"]
    db = Database(settings.database_url)
    app["db"] = db
    log.info("database %s", mask_url(settings.database_url))
    yield
    await db.close()


async def _verify_token_hashes(app: web.Application):
    """Verify tokens saved before they were stored as HMAC-SHA256 get that hash (idempotent; in the
    background, retried while the database is down)."""
    task = asyncio.create_task(
        upgrade_verify_token_hashes_soon(app["db"], app["secret_box"]), name="verify-token-hashes"
    )
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _redis(app: web.Application):
    """``app["redis"]`` (None without REDIS_URL) and the authentication throttle that shares it."""
    settings: Settings = app["settings"]
    app["redis"] = None
    app["auth_throttle"] = AuthThrottle(auth_policy(settings))
    if not settings.redis_url:
        yield
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=15
    )
    app["redis"] = client
    app["auth_throttle"] = AuthThrottle(auth_policy(settings), redis=client)
    log.info("redis %s", mask_url(settings.redis_url))
    yield
    await client.aclose()


def auth_policy(settings: Settings) -> Policy:
    return Policy(
        free=settings.auth_free_failures,
        base_s=settings.auth_backoff_base_s,
        cap_s=settings.auth_backoff_cap_s,
        window_s=settings.auth_failure_window_s,
    )


async def _realtime(app: web.Application):
    """The event publisher ``app["events"]`` and the Socket.IO relay ``app["sio"]``."""
    async with realtime.running(app):
        yield


async def _providers(app: web.Application):
    """One Cloud API client (one HTTP session) per process, shared by every tenant."""
    settings: Settings = app["settings"]
    client = await CloudAPIClient.create(settings.graph_api_url)
    app["cloud_api"] = client
    yield
    await client.close()


async def _supervisor(app: web.Application):
    """``app["supervisor"]``: every tenant's bridge. Closed before the publisher and the database."""
    settings: Settings = app["settings"]
    if not settings.supervisor_enabled:
        log.info("supervisor disabled (SUPERVISOR_ENABLED=false): no WhatsApp Web sessions")
        yield
        return
    supervisor = Supervisor(settings, app["db"], events=app.get("events"))
    await supervisor.startup()
    app["supervisor"] = supervisor
    try:
        yield
    finally:
        await supervisor.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[access_middleware, error_middleware],
        client_max_size=max(settings.max_body_bytes, settings.webhook_max_body_bytes) + 64 * 1024,
    )
    app["settings"] = settings
    app["secret_box"] = SecretBox(settings.secret_key.get())
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_verify_token_hashes)
    app.cleanup_ctx.append(_redis)
    realtime.attach(app)
    app.on_shutdown.append(realtime.release_clients)  # first thing once the server stops accepting
    app.cleanup_ctx.append(_realtime)
    app.cleanup_ctx.append(inbound_context)  # app["inbound"]: inbound messages and statuses, both roads
    app.cleanup_ctx.append(_providers)
    app.cleanup_ctx.append(_supervisor)
    app.cleanup_ctx.append(webhooks.webhooks_context)
    app.cleanup_ctx.append(dispatcher_context)  # app["dispatcher"], after the supervisor
    router = build_router()
    app["router_spec"] = router
    router.register(app, authenticate=auth.authenticate)
    openapi.setup(app, router)
    admin_views.setup(app)
    return app
