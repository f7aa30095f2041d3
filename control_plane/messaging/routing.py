"""Which road carries a message, and why. Pure: no I/O, so every rule is unit-testable.

Policies (``whatsapp_config.fallback_policy``):

- ``web_only``: the Web session; while it is not ready the message waits (retried with backoff).
- ``business_api_only``: the Cloud API.
- ``web_first``: the Web session when ready, otherwise the Cloud API (if configured).
- ``business_api_first``: the Cloud API when configured and able to carry this message, otherwise the
  Web session when ready.

Fallback happens only when the preferred road is unavailable (session not ready, Cloud API not
configured / token refused / cannot carry the message) and only to a configured road. Outside the
24-hour customer-service window the Cloud API takes only templates: a free-form message uses the
tenant's fallback template if one is configured, otherwise (no other road) it fails with
``outside_window``. Templates, interactive messages and reactions exist only on the Cloud API.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

WEB = "web"
CLOUD = "business_api"
WINDOW = dt.timedelta(hours=24)
WEB_TYPES = frozenset({"text", "image", "document", "audio", "video", "sticker", "location"})
POLICIES = ("web_only", "business_api_only", "web_first", "business_api_first")


@dataclass(frozen=True)
class Roads:
    """What a tenant has right now."""

    policy: str = "web_only"
    web_configured: bool = True
    web_ready: bool = False
    web_state: str = "unknown"
    cloud_configured: bool = False
    cloud_blocked: str | None = None  # e.g. "token refused (190)": the road is configured but unusable
    fallback_template: dict[str, Any] | None = None  # {name, language, body_param}


@dataclass(frozen=True)
class Decision:
    """``action``: send (on ``provider``), wait (no road now; retry later) or fail (never possible)."""

    action: str
    provider: str | None = None
    reason: str = ""
    error_code: str | None = None
    use_fallback_template: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def window_open(last_inbound_at: dt.datetime | None, now: dt.datetime) -> bool:
    return last_inbound_at is not None and now - last_inbound_at < WINDOW


def window_open_until(last_inbound_at: dt.datetime | None) -> dt.datetime | None:
    return last_inbound_at + WINDOW if last_inbound_at is not None else None


def _cloud_can_carry(kind: str, in_window: bool, roads: Roads) -> tuple[bool, str, bool]:
    """(can, why-not, needs fallback template)."""
    if not roads.cloud_configured:
        return False, "Business API not configured", False
    if roads.cloud_blocked:
        return False, f"Business API unusable: {roads.cloud_blocked}", False
    if kind == "template" or in_window:
        return True, "", False
    if roads.fallback_template:
        return True, "", True
    return False, "outside the 24 h window the Cloud API only takes templates", False


def decide(
    *,
    kind: str,
    requested: str,
    roads: Roads,
    last_inbound_at: dt.datetime | None,
    now: dt.datetime,
    web_capable: bool = True,
) -> Decision:
    """The road for one message. ``requested``: auto | web | business_api (the request's ``provider``);
    ``web_capable=False`` for content only the Cloud API can carry (media given by Cloud media id)."""
    in_window = window_open(last_inbound_at, now)
    web_can_type = kind in WEB_TYPES and web_capable
    cloud_ok, cloud_why, cloud_tpl = _cloud_can_carry(kind, in_window, roads)
    state = f"session {roads.web_state}"

    def cloud(reason: str) -> Decision:
        if cloud_tpl:
            reason += (
                f"; outside the 24 h window: sent as fallback template {roads.fallback_template['name']}"
            )
        return Decision("send", CLOUD, reason, use_fallback_template=cloud_tpl)

    def cloud_failure(prefix: str = "") -> Decision:
        if not roads.cloud_configured:
            return Decision(
                "fail", None, prefix + "no configured road can carry this message", error_code="no_route"
            )
        if roads.cloud_blocked:
            return Decision("fail", CLOUD, prefix + cloud_why, error_code="provider_unusable")
        return Decision(
            "fail",
            CLOUD,
            prefix + "the customer wrote more than 24 h ago (or never): outside the "
            "window the Cloud API only takes templates; send a template or configure a "
            "fallback template",
            error_code="outside_window",
        )

    # An explicit road in the request overrides the policy (no fallback).
    if requested == WEB:
        if not web_can_type:
            return Decision(
                "fail", WEB, f"{kind} messages need the Business API", error_code="unsupported_on_web"
            )
        if not roads.web_configured:
            return Decision("fail", WEB, "the Web session is not configured", error_code="no_route")
        if roads.web_ready:
            return Decision("send", WEB, "requested provider web")
        return Decision("wait", WEB, f"requested provider web; {state}", error_code="web_not_ready")
    if requested == CLOUD:
        if cloud_ok:
            return cloud("requested provider business_api")
        return cloud_failure("requested provider business_api: ")

    policy = roads.policy if roads.policy in POLICIES else "web_only"
    web_usable = roads.web_configured and web_can_type
    if policy == "web_only":
        if not web_can_type:
            return Decision(
                "fail",
                WEB,
                f"{kind} messages need the Business API; policy is web_only",
                error_code="unsupported_on_web",
            )
        if roads.web_ready:
            return Decision("send", WEB, "policy web_only")
        return Decision("wait", WEB, f"policy web_only; {state}", error_code="web_not_ready")
    if policy == "business_api_only":
        if cloud_ok:
            return cloud("policy business_api_only")
        return cloud_failure("policy business_api_only: ")
    if policy == "web_first":
        if web_usable and roads.web_ready:
            return Decision("send", WEB, "policy web_first; session ready")
        if cloud_ok:
            why = f"{kind} messages need the Business API" if not web_can_type else f"{state}"
            return cloud(f"fallback to business_api: {why}")
        if web_usable:
            return Decision(
                "wait",
                WEB,
                f"policy web_first; {state}; Business API cannot take it ({cloud_why})",
                error_code="web_not_ready",
            )
        return cloud_failure("policy web_first: ")
    # business_api_first
    if cloud_ok:
        return cloud("policy business_api_first")
    if web_usable and roads.web_ready:
        return Decision("send", WEB, f"fallback to web: {cloud_why}")
    if web_usable and roads.cloud_configured and not roads.cloud_blocked:
        # Cloud could not take it (window); the session may come back.
        return Decision(
            "wait", WEB, f"policy business_api_first; {cloud_why}; {state}", error_code="web_not_ready"
        )
    if web_usable:
        return Decision(
            "wait", WEB, f"policy business_api_first; {cloud_why}; {state}", error_code="web_not_ready"
        )
    return cloud_failure("policy business_api_first: ")


def fallback_on_web_down(
    roads: Roads, requested: str, kind: str, last_inbound_at: dt.datetime | None, now: dt.datetime
) -> Decision | None:
    """The Web session went down mid-send (the bridge said not ready: nothing was sent). The Cloud API
    takes over when the policy allows a fallback and it can carry the message."""
    if requested != "auto" or roads.policy not in ("web_first", "business_api_first"):
        return None
    cloud_ok, _, cloud_tpl = _cloud_can_carry(kind, window_open(last_inbound_at, now), roads)
    if not cloud_ok:
        return None
    reason = "fallback to business_api: the Web session went down mid-send"
    if cloud_tpl:
        reason += f"; outside the 24 h window: sent as fallback template {roads.fallback_template['name']}"
    return Decision("send", CLOUD, reason, use_fallback_template=cloud_tpl)
