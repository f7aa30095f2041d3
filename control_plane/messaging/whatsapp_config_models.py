"""A tenant's WhatsApp config as the API reads and writes it: the request and response models (their
JSON Schema carries the rules between fields, so the OpenAPI document and the validation agree), the
rules a whole config must satisfy, and the default fallback policy. Saving lives in
``messaging/whatsapp_config.py``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from control_plane import errors
from control_plane.crypto import mask
from control_plane.db import whatsapp_config as config_db
from control_plane.http.models import (
    RequestModel,
    ResponseModel,
    UTCDateTime,
    reports_invalid_input,
    with_examples,
)

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
    POST the body is the whole config (omitted fields take the defaults: api_type web, a fallback_policy
    that follows api_type); on PUT only the fields it sets count (a rule broken with the stored config is
    a 409)."""

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
                errors.Conflict(
                    f"{message} (with the stored configuration)", code="inconsistent_config", field=field
                )
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
                    (
                        f"'{name}' is required when api_type is {api_type}",
                        "missing_field",
                        name,
                        ("api_type", name),
                    )
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
