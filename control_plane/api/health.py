"""Liveness and readiness for load balancers and Kubernetes."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import BaseModel

from control_plane.http.routing import Router

log = logging.getLogger(__name__)
TAGS = ("health",)
router = Router(tags=TAGS, auth="none")
CHECK_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
    error: dict | None = None


@router.route("GET", "/healthz", response=Health, summary="Liveness (no I/O)")
async def healthz(request: web.Request) -> Health:
    return Health(status="ok")


async def _check(name: str, probe) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
        return name, "ok"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("readiness check %s failed: %s", name, type(exc).__name__)
        return name, f"failed: {type(exc).__name__}"


@router.route(
    "GET",
    "/readyz",
    response=Readiness,
    extra_responses={
        503: {
            "description": "Not ready; the body names what failed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
        }
    },
    summary="Readiness: database, Redis when configured, supervisor",
)
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    probes = [("database", app["db"].ping)]
    if app.get("redis") is not None:
        probes.append(("redis", app["redis"].ping))
    results = dict(await asyncio.gather(*(_check(n, p) for n, p in probes)))
    supervisor = app.get("supervisor")
    if supervisor is not None:
        results["supervisor"] = "ok" if supervisor.is_running else "failed: not running"
    failed = [name for name, state in results.items() if state != "ok"]
    if failed:
        body = Readiness(
            status="unavailable",
            checks=results,
            error={"code": "not_ready", "message": f"not ready: {', '.join(failed)} failed"},
        )
        return web.json_response(body.model_dump(), status=503)
    return web.json_response(Readiness(status="ok", checks=results).model_dump(exclude_none=True))
