"""A tenant's WhatsApp setup: saving it (Business API credentials checked against the Graph API
first). Secrets are write-only: encrypted at rest, masked on read, never logged.

The HTTP routes (``api/whatsapp_config.py``) and the admin pages both show a config through
``config_out``; ``WhatsAppSetup.save`` is the one way to change one. The models and the rules between
fields are in ``whatsapp_config_models.py`` (re-exported here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane import errors
from control_plane.crypto import SecretBox
from control_plane.db import Database, utcnow
from control_plane.db import whatsapp_config as config_db
from control_plane.messaging.whatsapp_config_models import (  # noqa: F401 (re-exported)
    BUSINESS_TYPES,
    CLEARED_VERIFICATION,
    CREDENTIAL_FIELDS,
    EXAMPLE_CONFIG,
    NOT_NULL_FIELDS,
    SECRET_FIELDS,
    VERIFY_TIMEOUT_S,
    ApiType,
    FallbackPolicy,
    NumericId,
    Verification,
    VerificationStatus,
    WhatsAppConfigCreate,
    WhatsAppConfigIn,
    WhatsAppConfigOut,
    check_consistency,
    config_out,
    consistency_errors,
    merged_view,
    requested_changes,
    with_default_policy,
)
from control_plane.providers.cloud_api import (
    CloudAPIClient,
    CloudCredentials,
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPIUnavailable,
    PhoneNumberInfo,
)

log = logging.getLogger(__name__)


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
