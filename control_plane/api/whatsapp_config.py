"""``/api/whatsapp/config``: the tenant's WhatsApp setup (models and rules in
``messaging/whatsapp_config.py``). Secrets are write-only: encrypted at rest, masked on read, never
logged."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from control_plane import forwarded
from control_plane.db import whatsapp_config as config_db
from control_plane.http.auth import load_tenant
from control_plane.http.models import ResponseModel
from control_plane.http.routing import Router
from control_plane.messaging.whatsapp_config import (
    WhatsAppConfigCreate,
    WhatsAppConfigIn,
    WhatsAppConfigOut,
    WhatsAppSetup,
    config_out,
)
from control_plane.webhooks.routes import PATH as WEBHOOK_PATH

TAGS = ("whatsapp config",)
router = Router(tags=TAGS, auth="tenant")


class WebhookSetup(ResponseModel):
    """What to paste into Meta's app dashboard (WhatsApp -> Configuration -> Webhook)."""

    callback_url: str = Field(
        description="This gateway's webhook address as the caller reaches it (scheme and host of this "
        "request, through TRUSTED_PROXIES); Meta needs it over HTTPS"
    )
    verify_token: str | None = Field(
        default=None, description="The tenant's webhook verify token in clear; null when none is set"
    )


def setup_of(app: web.Application) -> WhatsAppSetup:
    return WhatsAppSetup(
        db=app["db"],
        box=app["secret_box"],
        cloud_api=app["cloud_api"],
        default_api_version=app["settings"].graph_api_version,
    )


async def _save(request: web.Request, body: WhatsAppConfigIn, *, create: bool) -> WhatsAppConfigOut:
    row = await setup_of(request.app).save(request["tenant"]["id"], body, create=create)
    directory = request.app.get("webhook_directory")
    if directory is not None:
        directory.invalidate()  # webhook routing sees the new number / secret / active flag at once
    return config_out(row)


@router.route(
    "GET",
    "/api/whatsapp/config",
    response=WhatsAppConfigOut,
    summary="The tenant's WhatsApp configuration (secrets masked)",
)
async def get_config(request: web.Request) -> WhatsAppConfigOut:
    async with request.app["db"].connect() as conn:
        row = await config_db.get_whatsapp_config(conn, request["tenant"]["id"])
    return config_out(row)


@router.route(
    "POST",
    "/api/whatsapp/config",
    body=WhatsAppConfigCreate,
    response=WhatsAppConfigOut,
    status=201,
    errors=(400, 409),
    summary="Create the tenant's WhatsApp configuration (409 if it exists)",
)
async def create_config(request: web.Request, body: WhatsAppConfigCreate) -> WhatsAppConfigOut:
    return await _save(request, body, create=True)


@router.route(
    "PUT",
    "/api/whatsapp/config",
    body=WhatsAppConfigIn,
    response=WhatsAppConfigOut,
    errors=(400, 409),
    summary="Update the configuration (partial: omitted fields keep their value; null clears)",
)
async def update_config(request: web.Request, body: WhatsAppConfigIn) -> WhatsAppConfigOut:
    return await _save(request, body, create=False)


@router.route(
    "POST",
    "/api/whatsapp/config/verify",
    response=WhatsAppConfigOut,
    errors=(409,),
    summary="Check the stored Business API credentials against the Graph API again",
)
async def verify_config(request: web.Request) -> WhatsAppConfigOut:
    """The outcome is stored and returned in ``verification``: ``verified``, ``unverified`` (the Graph
    API could not be reached) or ``failed`` (it refused the token or the number; ``message`` says
    why). 409 ``business_api_not_configured`` when there is nothing to check."""
    return config_out(await setup_of(request.app).recheck(request["tenant"]["id"]))


@router.route(
    "GET",
    "/api/tenants/{tenant_id}/whatsapp/webhook-setup",
    auth="admin",
    response=WebhookSetup,
    errors=(404,),
    summary="The Meta webhook callback URL and the tenant's verify token, to copy into Meta's dashboard",
)
async def webhook_setup(request: web.Request) -> WebhookSetup:
    tenant = await load_tenant(request, request.match_info["tenant_id"])
    async with request.app["db"].connect() as conn:
        row = await config_db.get_whatsapp_config(conn, tenant["id"])
    encrypted = row["verify_token_enc"] if row else None
    scheme = "https" if forwarded.is_https(request, request.app["settings"].trusted_proxies) else "http"
    return WebhookSetup(
        callback_url=f"{scheme}://{request.host}{WEBHOOK_PATH}",
        verify_token=request.app["secret_box"].decrypt(encrypted) if encrypted else None,
    )
