"""Admin: tenants and their API keys."""

from __future__ import annotations

import functools
import logging

from aiohttp import web
from pydantic import Field

from control_plane import errors
from control_plane.db import tenants as tenants_db
from control_plane.http.auth import load_tenant
from control_plane.http.models import RequestModel, ResponseModel, UTCDateTime
from control_plane.http.parsing import path_int
from control_plane.http.routing import Router

log = logging.getLogger(__name__)
TAGS = ("tenants",)
router = Router(tags=TAGS, auth="admin")

Name = Field(min_length=1, max_length=200)


class TenantCreate(RequestModel):
    name: str = Name
    sandbox: bool = False


class TenantUpdate(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    is_active: bool | None = None


class TenantOut(ResponseModel):
    id: str
    name: str
    sandbox: bool
    is_active: bool
    created_at: UTCDateTime
    updated_at: UTCDateTime


class TenantCreated(TenantOut):
    api_key: str = Field(description="Shown once; store it now. Only its hash is kept.")


class TenantList(ResponseModel):
    tenants: list[TenantOut]


class ApiKeyCreate(RequestModel):
    label: str | None = Field(default=None, max_length=100)


class ApiKeyOut(ResponseModel):
    id: int
    prefix: str
    label: str | None
    created_at: UTCDateTime
    revoked_at: UTCDateTime | None
    last_used_at: UTCDateTime | None = Field(
        default=None, description="When a request last authenticated with it (to the minute); null: never"
    )


class ApiKeyCreated(ApiKeyOut):
    api_key: str = Field(description="Shown once; store it now.")


class ApiKeyList(ResponseModel):
    api_keys: list[ApiKeyOut]


@router.route(
    "POST",
    "/api/tenants",
    summary="Create a tenant and its first API key",
    body=TenantCreate,
    response=TenantCreated,
    status=201,
)
async def create_tenant(request: web.Request, body: TenantCreate) -> TenantCreated:
    async with request.app["db"].begin() as conn:
        tenant = await tenants_db.create_tenant(conn, body.name, sandbox=body.sandbox)
        key, _ = await tenants_db.create_api_key(conn, tenant["id"], label="initial")
    log.info("tenant created tenant=%s sandbox=%s", tenant["id"], body.sandbox)
    return TenantCreated(**tenant, api_key=key)


@router.route("GET", "/api/tenants", summary="List tenants", response=TenantList)
async def list_tenants(request: web.Request) -> TenantList:
    async with request.app["db"].connect() as conn:
        rows = await tenants_db.list_tenants(conn)
    return TenantList(tenants=[TenantOut(**r) for r in rows])


@router.route(
    "GET",
    "/api/tenants/{tenant_id}",
    summary="Get a tenant",
    response=TenantOut,
    errors=(404,),
)
async def get_tenant(request: web.Request) -> TenantOut:
    return TenantOut(**await load_tenant(request, request.match_info["tenant_id"]))


@router.route(
    "PATCH",
    "/api/tenants/{tenant_id}",
    summary="Rename, deactivate or reactivate",
    body=TenantUpdate,
    response=TenantOut,
    errors=(404,),
)
async def update_tenant(request: web.Request, body: TenantUpdate) -> TenantOut:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    async with request.app["db"].begin() as conn:
        updated = await tenants_db.update_tenant(conn, tenant["id"], **changes)
    if updated is None:
        raise errors.NotFound("tenant not found", code="tenant_not_found")
    log.info("tenant updated tenant=%s fields=%s", tenant["id"], sorted(changes))
    if changes.get("is_active") is False:
        _recheck_open_connections(request)
    return TenantOut(**updated)


def _recheck_open_connections(request: web.Request) -> None:
    """A key revoked or a tenant deactivated or deleted: Socket.IO connections opened with it are
    closed now on this node (other nodes re-check on their own, within 30 s)."""
    relay = request.app.get("realtime_relay")
    if relay is not None:
        relay.recheck_soon()


@router.route(
    "DELETE",
    "/api/tenants/{tenant_id}",
    status=204,
    errors=(404,),
    summary="Delete a tenant: stops its session, removes its rows and its session folder",
)
async def delete_tenant(request: web.Request) -> None:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    supervisor = request.app.get("supervisor")
    if supervisor is not None:  # stop the bridge and remove sessions/<tenant-id>/ first
        await supervisor.forget(tenant["id"])
    async with request.app["db"].begin() as conn:
        await tenants_db.delete_tenant(conn, tenant["id"])
    log.info("tenant deleted tenant=%s", tenant["id"])
    _recheck_open_connections(request)
    return None


@router.route(
    "GET",
    "/api/tenants/{tenant_id}/api-keys",
    summary="List a tenant's API keys",
    response=ApiKeyList,
    errors=(404,),
)
async def list_api_keys(request: web.Request) -> ApiKeyList:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    async with request.app["db"].connect() as conn:
        rows = await tenants_db.list_api_keys(conn, tenant["id"])
    return ApiKeyList(api_keys=[ApiKeyOut(**r) for r in rows])


# The routes that issue a new key (its secret shown once).
_issue_key = functools.partial(
    router.route, "POST", body=ApiKeyCreate, response=ApiKeyCreated, status=201, errors=(404,)
)


@_issue_key("/api/tenants/{tenant_id}/api-keys", summary="Create an extra API key")
async def create_api_key(request: web.Request, body: ApiKeyCreate) -> ApiKeyCreated:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    async with request.app["db"].begin() as conn:
        key, row = await tenants_db.create_api_key(conn, tenant["id"], label=body.label)
    log.info("api key created tenant=%s key_id=%s", tenant["id"], row["id"])
    return ApiKeyCreated(**row, api_key=key)


@_issue_key(
    "/api/tenants/{tenant_id}/api-keys/rotate",
    summary="Rotate: revoke every live key of the tenant and issue one new key",
)
async def rotate_api_keys(request: web.Request, body: ApiKeyCreate) -> ApiKeyCreated:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    async with request.app["db"].begin() as conn:
        revoked = await tenants_db.revoke_all_api_keys(conn, tenant["id"])
        key, row = await tenants_db.create_api_key(conn, tenant["id"], label=body.label or "rotated")
    log.info("api keys rotated tenant=%s revoked=%d", tenant["id"], revoked)
    _recheck_open_connections(request)
    return ApiKeyCreated(**row, api_key=key)


@router.route(
    "DELETE",
    "/api/tenants/{tenant_id}/api-keys/{key_id:[0-9]+}",  # digits: .../api-keys/rotate is not a key
    status=204,
    summary="Revoke one API key (effective at once)",
    errors=(404,),
)
async def revoke_api_key(request: web.Request) -> None:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    key_id = path_int(request.match_info["key_id"])
    if key_id is None:
        raise errors.NotFound("API key not found", code="api_key_not_found")
    async with request.app["db"].begin() as conn:
        found = await tenants_db.revoke_api_key(conn, tenant["id"], key_id)
    if not found:
        raise errors.NotFound("API key not found", code="api_key_not_found")
    log.info("api key revoked tenant=%s key_id=%s", tenant["id"], key_id)
    _recheck_open_connections(request)
    return None


@router.route(
    "GET",
    "/api/me",
    auth="tenant",
    mirror=False,
    response=TenantOut,
    summary="The tenant this API key belongs to",
)
async def whoami(request: web.Request) -> TenantOut:
    return TenantOut(**request["tenant"])
