"""A tenant's WhatsApp setup: its request/response models, the rules a config must satisfy, and saving
it (Business API credentials checked against the Graph API first). Secrets are write-only: encrypted at
rest, masked on read, never logged.

The HTTP routes (``api/whatsapp_config.py``) and the admin pages both show a config through
``config_out``; ``WhatsAppSetup.save`` is the one way to change one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy.exc import IntegrityError

from control_plane import errors
from control_plane.crypto import SecretBox, mask
from control_plane.db import Database, utcnow
from control_plane.db import whatsapp_config as config_db
from control_plane.http.models import RequestModel, ResponseModel, UTCDateTime, reports_invalid_input, with_examples
from control_plane.providers.cloud_api import (
    CloudAPIClient,
    CloudCredentials,
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPIUnavailable,
    PhoneNumberInfo,
)

log = logging.getLogger(__name__)

ApiType = Literal["web", "business_api", "both"]
FallbackPolicy = Literal["web_only", "business_api_only", "web_first", "business_api_first"]
SECRET_FIELDS = ("access_token", "app_secret", "verify_token")
VerificationStatus = Literal["verified", "unverified", "failed"]
BUSINESS_TYPES = ("business_api", "both")
# Fields whose change means the Business API credentials must be checked again.
CREDENTIAL_FIELDS = ("api_type", "phone_number_id", "waba_id", "access_token", "api_version")
NOT_NULL_FIELDS = ("api_type", "fallback_policy", "is_active")
VERIFY_TIMEOUT_S = 10.0
NumericId = Field(
    default=None, max_length=64, pattern=r"^[0-9]{1,64}$", description="Numeric string, as Meta gives it"
)
CLEARED_VERIFICATION: dict[str, Any] = {
    "verification_status": None,
    "verification_message": None,
    "verified_at": None,
}


EXAMPLE_CONFIG: dict[str, Any] = {  # docs (api/openapi_examples.py)
        "api_type": "both",
        "fallback_policy": "web_first",
        "phone_number_id": "106540352242922",
        "waba_id": "102290129340398",
        "access_token": "EAAG-your-system-user-token",
        "app_secret": "your-meta-app-secret",
        "verify_token": "a-long-random-verify-token",
    }


def _rules(*, create: bool) -> Any:
    """``json_schema_extra``: ``check_consistency``'s rules on what one body can break by itself. On
    POST the body is the whole config (omitted fields take the defaults: api_type web, a fallback_policy that
    follows api_type); on PUT only the fields it sets count (a rule broken with the stored config is a 409)."""

    def when(field: str, values: tuple[str, ...], then: dict[str, Any]) -> dict[str, Any]:
        return {"if": {"required": [field], "properties": {field: {"enum": list(values)}}}, "then": then}

    def given(*fields: str, **properties: Any) -> dict[str, Any]:
        return {"required": list(fields) if create else [], "properties": properties}

    text = {"type": "string"}
    rules = [
        when(
            "api_type",
            BUSINESS_TYPES,
            given("phone_number_id", "access_token", phone_number_id=text, access_token=text),
        ),
        when(
            "fallback_policy",
            ("business_api_only",),
            given("api_type", api_type={"enum": list(BUSINESS_TYPES)}),
        ),
        when(  # an omitted fallback_policy follows api_type (with_default_policy)
            "api_type",
            ("business_api",),
            {"properties": {"fallback_policy": {"not": {"const": "web_only"}}}},
        ),
    ]

    def extra(schema: dict[str, Any]) -> None:
        for name in NOT_NULL_FIELDS:  # given, never null (an omitted one keeps its value or default)
            prop = schema["properties"][name]
            prop.pop("default", None)
            prop.update(next(s for s in prop.pop("anyOf") if s != {"type": "null"}))
        schema["allOf"] = rules

    return extra


@reports_invalid_input
def _not_null(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        raise errors.InvalidInput(
            f"'{info.field_name}' cannot be null", code="invalid_field", field=info.field_name
        )
    return value


class WhatsAppConfigIn(RequestModel):
    """PUT: a partial update (omitted fields keep their value; ``null`` clears a field, except
    ``api_type``, ``fallback_policy`` and ``is_active``). Secrets are write-only."""

    model_config = ConfigDict(json_schema_extra=with_examples(_rules(create=False), EXAMPLE_CONFIG))

    api_type: ApiType | None = None
    fallback_policy: FallbackPolicy | None = Field(
        default=None,
        description="When omitted on a new config, or with a changed api_type, it follows api_type: "
        "web -> web_only, business_api -> business_api_only, both -> web_first",
    )
    phone_number_id: str | None = NumericId
    waba_id: str | None = NumericId
    # Sent as an HTTP header to the Graph API: visible ASCII only (a control character cannot be sent).
    access_token: str | None = Field(default=None, min_length=8, max_length=2048, pattern=r"^[\x21-\x7e]+$")
    app_secret: str | None = Field(default=None, min_length=8, max_length=256)
    verify_token: str | None = Field(default=None, min_length=8, max_length=256)
    api_version: str | None = Field(default=None, pattern=r"^v[0-9]{1,3}\.[0-9]$")
    is_active: bool | None = None

    _never_null = field_validator(*NOT_NULL_FIELDS)(_not_null)


class WhatsAppConfigCreate(WhatsAppConfigIn):
    """POST: the whole config; omitted (or null) fields take their defaults."""

    model_config = ConfigDict(json_schema_extra=with_examples(_rules(create=True), EXAMPLE_CONFIG))


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "configured": True,
                    "api_type": "both",
                    "fallback_policy": "web_first",
                    "phone_number_id": "106540352242922",
                    "waba_id": "102290129340398",
                    "api_version": "v23.0",
                    "access_token": "********",
                    "app_secret": "********",
                    "verify_token": "********",
                    "is_active": True,
                    "business_api_ready": True,
                    "verification": {
                        "status": "verified",
                        "message": "the Graph API accepted the token for +1 555-078-3881 (Acme)",
                        "checked_at": "2026-01-15T09:30:00.000Z",
                    },
                    "created_at": "2026-01-15T09:29:58.000Z",
                    "updated_at": "2026-01-15T09:30:00.000Z",
                }
            ]
        }
    )
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
    """A stored config as the API shows it (secrets masked); the defaults when there is none."""
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


def check_consistency(merged: dict[str, Any], explicit: Collection[str] | None = None) -> None:
    """The combined config must make sense. Rules broken by the request's own fields (all of them
    when ``explicit`` is None: a create, whose body is the whole config) are a 422 naming every such
    field at once (``field_errors``, so a form shows them all), as its JSON Schema says (``_rules``);
    otherwise one broken with the stored config or the defaults (``explicit``: the fields a PUT sets)
    is a 409 ``inconsistent_config``."""
    own: list[errors.GatewayError] = []
    stored: list[errors.GatewayError] = []
    for message, code, field, involved in consistency_errors(merged):
        if explicit is None or set(involved) <= set(explicit):
            own.append(errors.InvalidInput(message, code=code, field=field))
        else:
            stored.append(
                errors.Conflict(f"{message} (with the stored configuration)", code="inconsistent_config", field=field)
            )
    if own:
        raise errors.InvalidInput.all_of(own)
    if stored:
        raise errors.Conflict.all_of(stored)


def consistency_errors(merged: dict[str, Any]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """Every rule ``merged`` breaks: (message, code, field, the fields involved)."""
    api_type = merged.get("api_type") or "web"
    policy = merged.get("fallback_policy") or "web_only"
    uses_business = api_type in BUSINESS_TYPES
    found: list[tuple[str, str, str, tuple[str, ...]]] = []
    if uses_business:
        for name in ("phone_number_id", "access_token"):
            if not merged.get(name):
                found.append(
                    (f"'{name}' is required when api_type is {api_type}", "missing_field", name, ("api_type", name))
                )
    if policy == "business_api_only" and not uses_business:
        found.append(
            (
                "fallback_policy business_api_only needs api_type business_api or both",
                "invalid_field",
                "fallback_policy",
                ("api_type", "fallback_policy"),
            )
        )
    if policy == "web_only" and api_type == "business_api":
        found.append(
            (
                "fallback_policy web_only needs api_type web or both",
                "invalid_field",
                "fallback_policy",
                ("api_type", "fallback_policy"),
            )
        )
    return found


def merged_view(existing: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """What ``check_consistency`` looks at: the stored config with the changes applied."""
    view: dict[str, Any] = {}
    if existing:
        view.update({k: existing[k] for k in ("api_type", "fallback_policy", "phone_number_id")})
        view["access_token"] = existing["access_token_enc"]
    view.update(changes)
    return view


def requested_changes(body: WhatsAppConfigIn, *, create: bool) -> dict[str, Any]:
    """The fields the request sets (on create, only non-null ones); 422 for a null that cannot be."""
    changes = body.model_dump(exclude_unset=True)
    if create:
        changes = {k: v for k, v in changes.items() if v is not None}
    nulls = [k for k in NOT_NULL_FIELDS if k in changes and changes[k] is None]
    if nulls:
        raise errors.InvalidInput(f"'{nulls[0]}' cannot be null", code="invalid_field", field=nulls[0])
    return changes


def with_default_policy(existing: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with the fallback policy that follows ``api_type`` when the request gives none: on a
    new config, and when the request changes the api_type (an unchanged api_type keeps the stored
    policy). An explicit policy is kept as given (``check_consistency`` refuses an incompatible pair)."""
    if "fallback_policy" in changes:
        return changes
    api_type = changes.get("api_type")
    if existing is None:
        return {**changes, "fallback_policy": config_db.DEFAULT_FALLBACK_POLICY[api_type or "web"]}
    if api_type is not None and api_type != existing["api_type"]:
        return {**changes, "fallback_policy": config_db.DEFAULT_FALLBACK_POLICY[api_type]}
    return changes


def _number_taken() -> errors.Conflict:
    return errors.Conflict(
        "phone_number_id is already registered to another tenant",
        code="phone_number_id_taken",
        field="phone_number_id",
    )


async def _check_number_owner(conn: Any, tenant_id: str, phone_number_id: str | None) -> None:
    if not phone_number_id:
        return
    owner = await config_db.phone_number_id_owner(conn, phone_number_id)
    if owner is not None and owner != tenant_id:
        raise _number_taken()


def _unverified(now: dt.datetime, message: str) -> dict[str, Any]:
    return {"verification_status": "unverified", "verified_at": now, "verification_message": message}


def _verified(now: dt.datetime, info: PhoneNumberInfo, phone_number_id: str) -> dict[str, Any]:
    named = f"({info.verified_name})" if info.verified_name else ""
    label = " ".join(x for x in (info.display_phone_number, named) if x)
    return {
        "verification_status": "verified",
        "verified_at": now,
        "verification_message": f"the Graph API accepted the token for {label or phone_number_id}",
    }


def _refused_token(tenant_id: str, exc: GraphAPIError) -> errors.BadRequest:
    log.info("whatsapp config refused by the Graph API tenant=%s code=%s", tenant_id, exc.code)
    return errors.BadRequest(
        f"the Graph API rejected access_token (code {exc.code}): {exc.message}",
        code="invalid_access_token",
        field="access_token",
    )


def _refused_number(tenant_id: str, phone_number_id: str, exc: GraphAPIError) -> errors.BadRequest:
    log.info("whatsapp config refused by the Graph API tenant=%s code=%s", tenant_id, exc.code)
    return errors.BadRequest(
        f"the Graph API refused phone_number_id {phone_number_id} with this access_token "
        f"(code {exc.code}): {exc.message}",
        code="invalid_phone_number_id",
        field="phone_number_id",
    )


@dataclass(frozen=True)
class WhatsAppSetup:
    """Saves tenants' configs: what it needs, passed in (the app's database, secret box, Graph API
    client and default API version)."""

    db: Database
    box: SecretBox
    cloud_api: CloudAPIClient
    default_api_version: str

    async def save(self, tenant_id: str, body: WhatsAppConfigIn, *, create: bool) -> dict[str, Any]:
        """Create (409 if one exists) or update the tenant's config; returns the stored row.

        Cheap checks first, then the Graph API (outside any transaction), then the write, which checks
        again what a concurrent save could have changed."""
        requested = requested_changes(body, create=create)
        async with self.db.connect() as conn:
            existing = await config_db.get_whatsapp_config(conn, tenant_id)
            await _check_number_owner(conn, tenant_id, requested.get("phone_number_id"))
        changes = with_default_policy(existing, requested)
        verification = None
        explicit = None if create else set(requested)
        if not (create and existing is not None):
            check_consistency(merged_view(existing, changes), explicit)
            verification = await self.verify_credentials(tenant_id, existing, changes)
        row = await self._write(tenant_id, requested, verification, create=create)
        log.info(
            "whatsapp config saved tenant=%s fields=%s verification=%s",
            tenant_id,
            sorted(changes),
            row.get("verification_status"),
        )
        return row

    async def recheck(self, tenant_id: str) -> dict[str, Any]:
        """Check the stored Business API credentials against the Graph API again and store the
        outcome: verified, unverified (the Graph API could not be reached) or failed (it refused the
        token or the number; the reason kept in the message). 409 when there is nothing to check."""
        async with self.db.connect() as conn:
            existing = await config_db.get_whatsapp_config(conn, tenant_id)
        if (
            existing is None
            or existing["api_type"] not in BUSINESS_TYPES
            or not (existing["access_token_enc"] and existing["phone_number_id"])
        ):
            raise errors.Conflict(
                "the Business API is not configured for this tenant: nothing to verify",
                code="business_api_not_configured",
            )
        try:
            verification = await self.verify_credentials(
                tenant_id, existing, {"api_type": existing["api_type"]}
            )
        except errors.BadRequest as exc:
            verification = {
                "verification_status": "failed",
                "verified_at": utcnow(),
                "verification_message": exc.message,
            }
        assert verification is not None  # stored token and number: always checked
        async with self.db.begin() as conn:
            row = await config_db.save_whatsapp_config(conn, tenant_id, verification)
        log.info(
            "whatsapp config re-verified tenant=%s verification=%s", tenant_id, row["verification_status"]
        )
        return row

    async def _write(
        self,
        tenant_id: str,
        changes: dict[str, Any],
        verification: dict[str, Any] | None,
        *,
        create: bool,
    ) -> dict[str, Any]:
        async with self.db.begin() as conn:
            existing = await config_db.get_whatsapp_config(conn, tenant_id)
            if create and existing is not None:
                raise errors.Conflict(
                    "WhatsApp config already exists for this tenant; use PUT to change it",
                    code="config_exists",
                )
            explicit = None if create else set(changes)
            changes = with_default_policy(existing, changes)  # against the row as it is now
            check_consistency(merged_view(existing, changes), explicit)
            await _check_number_owner(conn, tenant_id, changes.get("phone_number_id"))
            columns = self.to_columns(changes)
            if verification is not None:
                columns.update(verification)
            try:
                return await config_db.save_whatsapp_config(conn, tenant_id, columns)
            except IntegrityError:
                raise _number_taken() from None

    def to_columns(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Request fields -> column values, encrypting secrets."""
        columns: dict[str, Any] = {}
        for name, value in changes.items():
            if name in SECRET_FIELDS:
                columns[f"{name}_enc"] = self.box.encrypt(value) if value else None
                if name == "verify_token":
                    columns["verify_token_hash"] = self.box.keyed_hash(value) if value else None
            else:
                columns[name] = value
        return columns

    async def verify_credentials(
        self, tenant_id: str, existing: dict[str, Any] | None, changes: dict[str, Any]
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
        if (merged.get("api_type") or "web") not in BUSINESS_TYPES:
            return dict(CLEARED_VERIFICATION)
        if existing is not None and not any(f in changes for f in CREDENTIAL_FIELDS):
            return None  # e.g. only the fallback policy changed: keep the stored verification
        token = changes.get("access_token")
        if token is None and existing and existing["access_token_enc"]:
            token = self.box.decrypt(existing["access_token_enc"])
        pnid = merged.get("phone_number_id")
        if not token or not pnid:
            return None  # check_consistency already answered 422 for a business config without them
        creds = CloudCredentials(
            phone_number_id=pnid,
            waba_id=merged.get("waba_id") or "",
            access_token=token,
            api_version=merged.get("api_version") or self.default_api_version,
        )
        return await self._ask_graph_api(tenant_id, creds)

    async def _ask_graph_api(self, tenant_id: str, creds: CloudCredentials) -> dict[str, Any]:
        now = utcnow()
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT_S):
                info = await self.cloud_api.get_phone_number(creds)
        except GraphAPIAuthError as exc:
            raise _refused_token(tenant_id, exc) from None
        except (GraphAPIUnavailable, TimeoutError) as exc:
            log.warning(
                "whatsapp config saved unverified: Graph API unreachable tenant=%s (%s)",
                tenant_id,
                type(exc).__name__,
            )
            return _unverified(
                now,
                "the Graph API could not be reached; saved without verification (saving again re-checks)",
            )
        except GraphAPIError as exc:
            if exc.retryable:
                return _unverified(
                    now,
                    f"the Graph API answered a temporary error (code {exc.code}); "
                    "saved without verification (saving again re-checks)",
                )
            raise _refused_number(tenant_id, creds.phone_number_id, exc) from None
        return _verified(now, info, creds.phone_number_id)


async def upgrade_verify_token_hashes(db: Database, box: SecretBox) -> int:
    """Make every stored verify token hash the keyed one (``SecretBox.keyed_hash``; rows saved before
    it hold an unsalted SHA-256). The encrypted token is the source of truth, so this runs at every
    start, idempotently: it decrypts each token and writes only the rows whose hash differs (a token
    this SECRET_KEY cannot decrypt is logged and left). Returns how many rows it rewrote."""
    async with db.connect() as conn:
        rows = await config_db.list_verify_tokens(conn)
    changed = 0
    for row in rows:
        try:
            wanted = box.keyed_hash(box.decrypt(row["verify_token_enc"]))
        except ValueError:
            log.warning("verify token of tenant=%s: cannot decrypt with this SECRET_KEY", row["tenant_id"])
            continue
        if row["verify_token_hash"] == wanted:
            continue
        async with db.begin() as conn:
            changed += await config_db.set_verify_token_hash(
                conn, row["tenant_id"], row["verify_token_enc"], wanted
            )
    if changed:
        log.info("verify tokens: %d stored hash(es) upgraded to HMAC-SHA256 (SECRET_KEY)", changed)
    return changed


async def upgrade_verify_token_hashes_soon(db: Database, box: SecretBox, retry_s: float = 5.0) -> None:
    """:func:`upgrade_verify_token_hashes` in the background from the start, retried until it has
    run once (the database may be down while the app starts)."""
    while True:
        try:
            await upgrade_verify_token_hashes(db, box)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "verify token hash upgrade failed (%s); retrying in %.0fs", type(exc).__name__, retry_s
            )
            await asyncio.sleep(retry_s)
