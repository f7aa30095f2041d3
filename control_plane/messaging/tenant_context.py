"""A tenant's roads as the dispatcher sees them: read from its config, refreshed with live state.

``load`` reads the stored part (whatsapp_config, messaging settings, the tenant's active flag) and
decrypts the Business API token; the dispatcher caches it for ``CONTEXT_TTL_S`` and, at every claim,
lays the live part over it (``with_live_state``: the Web session's readiness, a Cloud road closed
by a refused token).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from control_plane.db import outbox as outbox_db
from control_plane.db import tenants as tenants_db
from control_plane.db import whatsapp_config as config_db
from control_plane.messaging import routing
from control_plane.providers.graph_types import CloudCredentials

log = logging.getLogger(__name__)

BATCH_WINDOW_S = 1.0  # a claim takes what the governor can send in this long
CONTEXT_TTL_S = 5.0  # a tenant's config is re-read this often (and at once after a settings change)


@dataclass
class TenantContext:
    roads: routing.Roads
    creds: CloudCredentials | None
    loaded_at: float
    active: bool = True


async def load(db: Any, secret_box: Any, settings: Any, tenant_id: str, now: float) -> TenantContext:
    async with db.connect() as conn:
        cfg = await config_db.get_whatsapp_config(conn, tenant_id)
        ms = await outbox_db.get_settings(conn, tenant_id)
        tenant = await tenants_db.get_tenant(conn, tenant_id)
    api_type = cfg["api_type"] if cfg else "web"
    creds = _cloud_credentials(secret_box, settings, tenant_id, cfg) if cfg else None
    roads = routing.Roads(
        policy=cfg["fallback_policy"] if cfg else "web_only",
        web_configured=api_type in ("web", "both") and (cfg is None or cfg["is_active"]),
        cloud_configured=creds is not None,
        fallback_template=_fallback_template(ms),
    )
    return TenantContext(roads=roads, creds=creds, loaded_at=now, active=bool(tenant and tenant["is_active"]))


def with_live_state(
    roads: routing.Roads, *, web_ready: bool, web_state: str, cloud_blocked: str | None
) -> routing.Roads:
    return dataclasses.replace(roads, web_ready=web_ready, web_state=web_state, cloud_blocked=cloud_blocked)


def claim_size(roads: routing.Roads, settings: Any) -> int:
    """About ``BATCH_WINDOW_S`` of the primary road's rate (at most ``messaging_batch_max``)."""
    web_primary = roads.web_configured and (
        roads.policy == "web_only"
        or (roads.policy == "web_first" and roads.web_ready)
        or not roads.cloud_configured
    )
    rate = settings.web_rate_per_s if web_primary else settings.cloud_rate_per_s
    return max(1, min(settings.messaging_batch_max, math.ceil(rate * BATCH_WINDOW_S)))


def _cloud_credentials(
    secret_box: Any, settings: Any, tenant_id: str, cfg: dict[str, Any]
) -> CloudCredentials | None:
    """The Business API number, when configured, active and its token decrypts."""
    configured = (
        cfg["api_type"] in ("business_api", "both")
        and cfg["phone_number_id"]
        and cfg["access_token_enc"]
        and cfg["is_active"]
    )
    if not configured:
        return None
    try:
        token = secret_box.decrypt(cfg["access_token_enc"])
        return CloudCredentials(
            phone_number_id=cfg["phone_number_id"],
            waba_id=cfg["waba_id"] or "",
            access_token=token,
            api_version=cfg["api_version"] or settings.graph_api_version,
        )
    except Exception:
        log.error("cannot decrypt the Business API token tenant=%s", tenant_id)
        return None


def _fallback_template(ms: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ms or not ms.get("fallback_template_name"):
        return None
    return {
        "name": ms["fallback_template_name"],
        "language": ms["fallback_template_language"],
        "body_param": bool(ms["fallback_template_body_param"]),
    }
