"""``/api/whatsapp/config``: the tenant's WhatsApp setup. Secrets are write-only: encrypted at rest,
masked on read, never logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.exc import IntegrityError

from control_plane import errors
from control_plane.api.models import RequestModel, ResponseModel, UTCDateTime
from control_plane.api.routing import Router
from control_plane.crypto import hash_api_key, mask
from control_plane.db import utcnow
from control_plane.db import whatsapp_config as config_db
from control_plane.providers.cloud_api import (
    CloudCredentials,
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPIUnavailable,
)

log = logging.getLogger(__name__)
router = Router()
TAGS = ("whatsapp config",)

ApiType = Literal["web", "business_api", "both"]
FallbackPolicy = Literal["web_only", "business_api_only", "web_first", "business_api_first"]
SECRET_FIELDS = ("access_token", "app_secret", "verify_token")
VerificationStatus = Literal["verified", "unverified", "failed"]
# Fields whose change means the Business API credentials must be checked again.
CREDENTIAL_FIELDS = ("api_type", "phone_number_id", "waba_id", "access_token", "api_version")
VERIFY_TIMEOUT_S = 10.0
NumericId = Field(default=None, pattern=r"^[0-9]{1,64}$", description="Numeric string, as Meta gives it")


class WhatsAppConfigIn(RequestModel):
    """All fields optional on PUT (a partial update; ``null`` clears a field). On POST, unset fields take
    their defaults. Secrets are write-only."""

    api_type: ApiType | None = None
    fallback_policy: FallbackPolicy | None = None
    phone_number_id: str | None = NumericId
    waba_id: str | None = NumericId
    access_token: str | None = Field(default=None, min_length=8, max_length=2048)
    app_secret: str | None = Field(default=None, min_length=8, max_length=256)
    verify_token: str | None = Field(default=None, min_length=8, max_length=256)
    api_version: str | None = Field(default=None, pattern=r"^v[0-9]{1,3}\.[0-9]$")
    is_active: bool | None = None


class Verification(ResponseModel):
    """The Business API credentials as last checked against the Graph API (GET /{phone_number_id})."""

    status: VerificationStatus = Field(
        description="verified: the Graph API accepted the token and number; "
        "unverified: the Graph API could not be reached, saved anyway (checked "
        "again on the next save); failed: a later call was refused"
    )
    message: str | None = None
    checked_at: UTCDateTime | None = None


class WhatsAppConfigOut(ResponseModel):
    configured: bool
    api_type: ApiType
    fallback_policy: FallbackPolicy
    phone_number_id: str | None = None
    waba_id: str | None = None
    api_version: str | None = None
    access_token: str | None = Field(default=None, description="Masked: '********' when set")
    app_secret: str | None = Field(default=None, description="Masked: '********' when set")
    verify_token: str | None = Field(default=None, description="Masked: '********' when set")
    is_active: bool = True
    business_api_ready: bool = Field(description="Business API fields present (token, phone number id)")
    verification: Verification | None = Field(
        default=None, description="null when the Business API is not configured"
    )
    created_at: UTCDateTime | None = None
    updated_at: UTCDateTime | None = None


def config_out(row: dict[str, Any] | None) -> WhatsAppConfigOut:
    if row is None:
        return WhatsAppConfigOut(
            configured=False, api_type="web", fallback_policy="web_only", business_api_ready=False
        )
    return WhatsAppConfigOut(
        configured=True,
        api_type=row["api_type"],
        fallback_policy=row["fallback_policy"],
        phone_number_id=row["phone_number_id"],
        waba_id=row["waba_id"],
        api_version=row["api_version"],
        access_token=mask(row["access_token_enc"]),
        app_secret=mask(row["app_secret_enc"]),
        verify_token=mask(row["verify_token_enc"]),
        is_active=row["is_active"],
        business_api_ready=bool(row["access_token_enc"] and row["phone_number_id"]),
        verification=(
            Verification(
                status=row["verification_status"],
                message=row.get("verification_message"),
                checked_at=row.get("verified_at"),
            )
            if row.get("verification_status")
            else None
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _check_consistency(merged: dict[str, Any]) -> None:
    """The combined config must make sense; 422 naming the field otherwise."""
    api_type = merged.get("api_type") or "web"
    policy = merged.get("fallback_policy") or "web_only"
    uses_business = api_type in ("business_api", "both")
    if uses_business:
        for name in ("phone_number_id", "access_token"):
            if not merged.get(name):
                raise errors.InvalidInput(
                    f"'{name}' is required when api_type is {api_type}", code="missing_field", field=name
                )
    if policy == "business_api_only" and not uses_business:
        raise errors.InvalidInput(
            "fallback_policy business_api_only needs api_type business_api or both",
            code="invalid_field",
            field="fallback_policy",
        )
    if policy == "web_only" and api_type == "business_api":
        raise errors.InvalidInput(
            "fallback_policy web_only needs api_type web or both",
            code="invalid_field",
            field="fallback_policy",
        )


def to_columns(request: web.Request, changes: dict[str, Any]) -> dict[str, Any]:
    """Request fields -> column values, encrypting secrets."""
    box = request.app["secret_box"]
    columns: dict[str, Any] = {}
    for name, value in changes.items():
        if name in SECRET_FIELDS:
            columns[f"{name}_enc"] = box.encrypt(value) if value else None
            if name == "verify_token":
                columns["verify_token_hash"] = hash_api_key(value) if value else None
        else:
            columns[name] = value
    return columns


def _merged_view(request: web.Request, existing: dict[str, Any] | None, changes: dict[str, Any]) -> dict:
    view: dict[str, Any] = {}
    if existing:
        view.update({k: existing[k] for k in ("api_type", "fallback_policy", "phone_number_id")})
        view["access_token"] = existing["access_token_enc"]
    view.update(changes)
    return view


async def verify_credentials(
    request: web.Request, existing: dict[str, Any] | None, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Check the Business API token and phone_number_id against the Graph API before saving.

    Returns the verification columns to store (None: nothing to check, keep what is stored). Raises
    400 naming ``access_token`` when the Graph API refuses the token (codes 0/190), 400 naming
    ``phone_number_id`` when the token cannot use that number. When the Graph API cannot be reached
    the config is saved as ``unverified`` (and checked again on the next save)."""
    merged: dict[str, Any] = {}
    if existing:
        merged = {
            k: existing[k] for k in ("api_type", "phone_number_id", "waba_id", "api_version", "is_active")
        }
        merged["access_token"] = existing["access_token_enc"]
    merged.update(changes)
    if (merged.get("api_type") or "web") not in ("business_api", "both"):
        return {"verification_status": None, "verification_message": None, "verified_at": None}
    if existing is not None and not any(f in changes for f in CREDENTIAL_FIELDS):
        return None  # e.g. only the fallback policy changed: keep the stored verification
    token = changes.get("access_token")
    if token is None and existing and existing["access_token_enc"]:
        token = request.app["secret_box"].decrypt(existing["access_token_enc"])
    pnid = merged.get("phone_number_id")
    if not token or not pnid:
        return None  # _check_consistency already answered 422 for a business config without them
    settings = request.app["settings"]
    creds = CloudCredentials(
        phone_number_id=pnid,
        waba_id=merged.get("waba_id") or "",
        access_token=token,
        api_version=merged.get("api_version") or settings.graph_api_version,
    )
    now = utcnow()
    try:
        async with asyncio.timeout(VERIFY_TIMEOUT_S):
            info = await request.app["cloud_api"].get_phone_number(creds)
    except GraphAPIAuthError as exc:
        log.info(
            "whatsapp config refused by the Graph API tenant=%s code=%s", request["tenant"]["id"], exc.code
        )
        raise errors.BadRequest(
            f"the Graph API rejected access_token (code {exc.code}): {exc.message}",
            code="invalid_access_token",
            field="access_token",
        ) from None
    except (GraphAPIUnavailable, TimeoutError) as exc:
        log.warning(
            "whatsapp config saved unverified: Graph API unreachable tenant=%s (%s)",
            request["tenant"]["id"],
            type(exc).__name__,
        )
        return {
            "verification_status": "unverified",
            "verified_at": now,
            "verification_message": "the Graph API could not be reached; saved without verification "
            "(saving again re-checks)",
        }
    except GraphAPIError as exc:
        if exc.retryable:
            return {
                "verification_status": "unverified",
                "verified_at": now,
                "verification_message": f"the Graph API answered a temporary error (code {exc.code}); "
                "saved without verification (saving again re-checks)",
            }
        log.info(
            "whatsapp config refused by the Graph API tenant=%s code=%s", request["tenant"]["id"], exc.code
        )
        raise errors.BadRequest(
            f"the Graph API refused phone_number_id {pnid} with this access_token "
            f"(code {exc.code}): {exc.message}",
            code="invalid_phone_number_id",
            field="phone_number_id",
        ) from None
    label = " ".join(
        x for x in (info.display_phone_number, f"({info.verified_name})" if info.verified_name else "") if x
    )
    return {
        "verification_status": "verified",
        "verified_at": now,
        "verification_message": f"the Graph API accepted the token for {label or pnid}",
    }


async def _save(request: web.Request, body: WhatsAppConfigIn, *, create: bool) -> WhatsAppConfigOut:
    tenant = request["tenant"]
    changes = body.model_dump(exclude_unset=True)
    if create:
        changes = {k: v for k, v in changes.items() if v is not None}
    nulls = [k for k in ("api_type", "fallback_policy", "is_active") if k in changes and changes[k] is None]
    if nulls:
        raise errors.InvalidInput(f"'{nulls[0]}' cannot be null", code="invalid_field", field=nulls[0])
    # Cheap checks first, then the Graph API (outside any transaction), then the write.
    async with request.app["db"].connect() as conn:
        existing = await config_db.get_whatsapp_config(conn, tenant["id"])
        owner = (
            await config_db.phone_number_id_owner(conn, changes["phone_number_id"])
            if changes.get("phone_number_id")
            else None
        )
    if owner is not None and owner != tenant["id"]:
        raise errors.Conflict(
            "phone_number_id is already registered to another tenant",
            code="phone_number_id_taken",
            field="phone_number_id",
        )
    verification = None
    if not (create and existing is not None):
        _check_consistency(_merged_view(request, existing, changes))
        verification = await verify_credentials(request, existing, changes)
    async with request.app["db"].begin() as conn:
        existing = await config_db.get_whatsapp_config(conn, tenant["id"])
        if create and existing is not None:
            raise errors.Conflict(
                "WhatsApp config already exists for this tenant; use PUT to change it", code="config_exists"
            )
        _check_consistency(_merged_view(request, existing, changes))
        pnid = changes.get("phone_number_id")
        if pnid:
            owner = await config_db.phone_number_id_owner(conn, pnid)
            if owner is not None and owner != tenant["id"]:
                raise errors.Conflict(
                    "phone_number_id is already registered to another tenant",
                    code="phone_number_id_taken",
                    field="phone_number_id",
                )
        columns = to_columns(request, changes)
        if verification is not None:
            columns.update(verification)
        try:
            row = await config_db.save_whatsapp_config(conn, tenant["id"], columns)
        except IntegrityError:
            raise errors.Conflict(
                "phone_number_id is already registered to another tenant",
                code="phone_number_id_taken",
                field="phone_number_id",
            ) from None
    directory = request.app.get("webhook_directory")
    if directory is not None:
        directory.invalidate()  # webhook routing sees the new number / secret / active flag at once
    log.info(
        "whatsapp config saved tenant=%s fields=%s verification=%s",
        tenant["id"],
        sorted(changes),
        row.get("verification_status"),
    )
    return config_out(row)


@router.route(
    "GET",
    "/api/whatsapp/config",
    auth="tenant",
    tags=TAGS,
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
    auth="tenant",
    tags=TAGS,
    body=WhatsAppConfigIn,
    response=WhatsAppConfigOut,
    status=201,
    errors=(400, 409),
    summary="Create the tenant's WhatsApp configuration (409 if it exists)",
)
async def create_config(request: web.Request, body: WhatsAppConfigIn) -> WhatsAppConfigOut:
    return await _save(request, body, create=True)


@router.route(
    "PUT",
    "/api/whatsapp/config",
    auth="tenant",
    tags=TAGS,
    body=WhatsAppConfigIn,
    response=WhatsAppConfigOut,
    errors=(400, 409),
    summary="Update the configuration (partial: omitted fields keep their value; null clears)",
)
async def update_config(request: web.Request, body: WhatsAppConfigIn) -> WhatsAppConfigOut:
    return await _save(request, body, create=False)
