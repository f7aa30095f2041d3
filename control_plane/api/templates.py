"""``/api/whatsapp/templates``: the tenant's Business API message templates, mirrored from the Graph API.

``POST .../sync`` pages through ``GET /{waba_id}/message_templates`` and mirrors the result (upsert
per (name, language); templates Meta no longer lists are removed). ``GET`` reads the local copy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from pydantic import Field

from control_plane import errors
from control_plane.db import templates as templates_db
from control_plane.db import utcnow
from control_plane.db import whatsapp_config as config_db
from control_plane.http.models import ResponseModel, UTCDateTime
from control_plane.http.routing import Router
from control_plane.providers.cloud_api import (
    CloudCredentials,
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPIUnavailable,
)

log = logging.getLogger(__name__)
TAGS = ("templates",)
router = Router(tags=TAGS, auth="tenant")
SYNC_TIMEOUT_S = 60.0


class TemplateOut(ResponseModel):
    name: str
    language: str
    status: str | None = None
    category: str | None = None
    quality_score: str | None = Field(
        None, description="Meta's quality rating (GREEN, YELLOW, RED, UNKNOWN), from its webhooks"
    )
    components: list[dict[str, Any]]
    remote_id: str | None = None
    waba_id: str | None = None
    synced_at: UTCDateTime


class TemplateList(ResponseModel):
    templates: list[TemplateOut]


class TemplateSyncOut(TemplateList):
    created: int
    updated: int
    deleted: int
    total: int


def _template_out(row: dict[str, Any]) -> TemplateOut:
    return TemplateOut(
        name=row["name"],
        language=row["language"],
        status=row["status"],
        category=row["category"],
        quality_score=row.get("quality_score"),
        components=[c for c in row["components"] if isinstance(c, dict)],
        remote_id=row["remote_id"],
        waba_id=row["waba_id"],
        synced_at=row["synced_at"],
    )


@router.route(
    "GET",
    "/api/whatsapp/templates",
    response=TemplateList,
    summary="The tenant's message templates as last synced from the Graph API",
)
async def list_templates(request: web.Request) -> TemplateList:
    async with request.app["db"].connect() as conn:
        rows = await templates_db.list_templates(conn, request["tenant"]["id"])
    return TemplateList(templates=[_template_out(r) for r in rows])


@router.route(
    "POST",
    "/api/whatsapp/templates/sync",
    response=TemplateSyncOut,
    errors=(409, 503),
    summary="Fetch the WABA's templates from the Graph API and mirror them locally",
)
async def sync_templates(request: web.Request) -> TemplateSyncOut:
    tenant_id = request["tenant"]["id"]
    config, creds = await _sync_credentials(request, tenant_id)
    remote = await _fetch_templates(request, tenant_id, creds)
    items = [
        {
            "id": t.id,
            "name": t.name,
            "language": t.language,
            "status": t.status,
            "category": t.category,
            "components": t.components,
        }
        for t in remote
    ]
    async with request.app["db"].begin() as conn:
        counts = await templates_db.replace_templates(conn, tenant_id, config["waba_id"], items)
        rows = await templates_db.list_templates(conn, tenant_id)
    log.info("templates synced tenant=%s %s", tenant_id, counts)
    return TemplateSyncOut(templates=[_template_out(r) for r in rows], **counts)


async def _sync_credentials(request: web.Request, tenant_id: str) -> tuple[dict[str, Any], CloudCredentials]:
    """The tenant's Business API config and credentials (409 unless complete)."""
    async with request.app["db"].connect() as conn:
        config = await config_db.get_whatsapp_config(conn, tenant_id)
    if (
        not config
        or config["api_type"] not in ("business_api", "both")
        or not config["access_token_enc"]
        or not config["waba_id"]
        or not config["phone_number_id"]
    ):
        raise errors.Conflict(
            "template sync needs a Business API config with phone_number_id, waba_id and access_token",
            code="business_api_not_configured",
            field="waba_id",
        )
    creds = CloudCredentials(
        phone_number_id=config["phone_number_id"],
        waba_id=config["waba_id"],
        access_token=request.app["secret_box"].decrypt(config["access_token_enc"]),
        api_version=config["api_version"] or request.app["settings"].graph_api_version,
    )
    return config, creds


async def _fetch_templates(request: web.Request, tenant_id: str, creds: CloudCredentials) -> list[Any]:
    """The WABA's templates from the Graph API: a refused token is recorded on the config (409); an
    unreachable or busy Graph API is a 503, any other refusal a 409."""
    try:
        async with asyncio.timeout(SYNC_TIMEOUT_S):
            return await request.app["cloud_api"].list_templates(creds)
    except GraphAPIAuthError as exc:
        async with request.app["db"].begin() as conn:
            await config_db.save_whatsapp_config(
                conn,
                tenant_id,
                {
                    "verification_status": "failed",
                    "verified_at": utcnow(),
                    "verification_message": f"the Graph API rejected access_token (code {exc.code})",
                },
            )
        raise errors.Conflict(
            f"the Graph API rejected the stored access_token (code {exc.code}); update the WhatsApp config",
            code="invalid_access_token",
            field="access_token",
        ) from None
    except (GraphAPIUnavailable, TimeoutError):
        raise errors.Unavailable(
            "the Graph API could not be reached; retry later", code="graph_api_unavailable"
        ) from None
    except GraphAPIError as exc:
        if exc.retryable:
            raise errors.Unavailable(
                f"the Graph API answered a temporary error (code {exc.code}); retry later",
                code="graph_api_unavailable",
            ) from None
        raise errors.Conflict(
            f"the Graph API refused the template list (code {exc.code}): {exc.message}",
            code="graph_api_refused",
            field="waba_id",
        ) from None
