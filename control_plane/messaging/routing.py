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
``outside_window``. Templates, interactive messages and reactions exist only on the Cloud API, and
so does a contact known only by its business-scoped user id (a BSUID, no phone number: the Web
session cannot address it; ``bsuid_needs_business_api`` when the Cloud API is not a road).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.providers.base import CLOUD, MEDIA_KINDS, WEB

WINDOW = dt.timedelta(hours=24)
WEB_TYPES = frozenset({"text", "image", "document", "audio", "video", "sticker", "location"})
POLICIES = ("web_only", "business_api_only", "web_first", "business_api_first")
# Decision.action
SEND = "send"
WAIT = "wait"
FAIL = "fail"

__all__ = ["CLOUD", "FAIL", "POLICIES", "SEND", "WAIT", "WEB", "WEB_TYPES", "WINDOW", "Decision", "Roads"]


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


def web_capable(kind: str, content: Mapping[str, Any]) -> bool:
    """Media given by a Cloud API media id can only go by the Cloud API."""
    return not (kind in MEDIA_KINDS and content.get("media_id"))


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


def _as_template(reason: str, roads: Roads, use_template: bool) -> Decision:
    """Send on the Cloud API, as the tenant's fallback template when ``use_template``."""
    if use_template:
        name = (roads.fallback_template or {}).get("name")
        reason += f"; outside the 24 h window: sent as fallback template {name}"
    return Decision(SEND, CLOUD, reason, use_fallback_template=use_template)


@dataclass(slots=True)
class _Facts:
    """What one message's road depends on."""

    kind: str
    roads: Roads
    web_can_type: bool  # the Web session can carry this message
    cloud_ok: bool
    cloud_why: str  # why not, when not cloud_ok
    cloud_tpl: bool  # the Cloud API takes it only as the fallback template
    bsuid: bool = False  # the recipient is known only by a BSUID

    @property
    def state(self) -> str:
        return f"session {self.roads.web_state}"

    @property
    def web_usable(self) -> bool:
        return self.roads.web_configured and self.web_can_type

    def cloud(self, reason: str) -> Decision:
        return _as_template(reason, self.roads, self.cloud_tpl)

    def cloud_failure(self, prefix: str = "") -> Decision:
        if not self.roads.cloud_configured:
            why = prefix + "no configured road can carry this message"
            return Decision(FAIL, None, why, error_code="no_route")
        if self.roads.cloud_blocked:
            return Decision(FAIL, CLOUD, prefix + self.cloud_why, error_code="provider_unusable")
        return Decision(
            FAIL,
            CLOUD,
            prefix + "the customer wrote more than 24 h ago (or never): outside the "
            "window the Cloud API only takes templates; send a template or configure a "
            "fallback template",
            error_code="outside_window",
        )

    def cloud_or_fail(self, reason: str) -> Decision:
        return self.cloud(reason) if self.cloud_ok else self.cloud_failure(f"{reason}: ")

    def needs_cloud(self, why: str) -> Decision:
        if self.bsuid:
            return Decision(
                FAIL,
                WEB,
                f"the contact is known only by its business-scoped user id (BSUID): only the "
                f"Business API can reach it{why}",
                error_code="bsuid_needs_business_api",
            )
        return Decision(
            FAIL, WEB, f"{self.kind} messages need the Business API{why}", error_code="unsupported_on_web"
        )

    def wait_web(self, reason: str) -> Decision:
        return Decision(WAIT, WEB, reason, error_code="web_not_ready")


def decide(
    *,
    kind: str,
    requested: str,
    roads: Roads,
    last_inbound_at: dt.datetime | None,
    now: dt.datetime,
    web_capable: bool = True,
    bsuid_recipient: bool = False,
) -> Decision:
    """The road for one message. ``requested``: auto | web | business_api (the request's ``provider``);
    ``web_capable=False`` for content only the Cloud API can carry (media given by Cloud media id);
    ``bsuid_recipient``: the contact is known only by a BSUID (the Web session cannot address it)."""
    cloud_ok, cloud_why, cloud_tpl = _cloud_can_carry(kind, window_open(last_inbound_at, now), roads)
    web_can = kind in WEB_TYPES and web_capable and not bsuid_recipient
    facts = _Facts(kind, roads, web_can, cloud_ok, cloud_why, cloud_tpl, bsuid_recipient)
    # An explicit road in the request overrides the policy (no fallback).
    if requested == WEB:
        return _requested_web(facts)
    if requested == CLOUD:
        return facts.cloud_or_fail("requested provider business_api")
    policy = roads.policy if roads.policy in POLICIES else "web_only"
    return _BY_POLICY[policy](facts)


def _requested_web(f: _Facts) -> Decision:
    if not f.web_can_type:
        return f.needs_cloud("")
    if not f.roads.web_configured:
        return Decision(FAIL, WEB, "the Web session is not configured", error_code="no_route")
    if f.roads.web_ready:
        return Decision(SEND, WEB, "requested provider web")
    return f.wait_web(f"requested provider web; {f.state}")


def _web_only(f: _Facts) -> Decision:
    if not f.web_can_type:
        return f.needs_cloud("; policy is web_only")
    if f.roads.web_ready:
        return Decision(SEND, WEB, "policy web_only")
    return f.wait_web(f"policy web_only; {f.state}")


def _business_api_only(f: _Facts) -> Decision:
    return f.cloud_or_fail("policy business_api_only")


def _web_first(f: _Facts) -> Decision:
    if f.web_usable and f.roads.web_ready:
        return Decision(SEND, WEB, "policy web_first; session ready")
    if f.cloud_ok:
        why = f.state
        if not f.web_can_type:
            why = (
                "the contact is known only by a BSUID"
                if f.bsuid
                else f"{f.kind} messages need the Business API"
            )
        return f.cloud(f"fallback to business_api: {why}")
    if f.web_usable:
        return f.wait_web(f"policy web_first; {f.state}; Business API cannot take it ({f.cloud_why})")
    return f.cloud_failure("policy web_first: ")


def _business_api_first(f: _Facts) -> Decision:
    if f.cloud_ok:
        return f.cloud("policy business_api_first")
    if f.web_usable and f.roads.web_ready:
        return Decision(SEND, WEB, f"fallback to web: {f.cloud_why}")
    if (
        f.web_usable
    ):  # Cloud cannot take it (window, not configured, token refused): the session may come back
        return f.wait_web(f"policy business_api_first; {f.cloud_why}; {f.state}")
    return f.cloud_failure("policy business_api_first: ")


_BY_POLICY: dict[str, Callable[[_Facts], Decision]] = {
    "web_only": _web_only,
    "business_api_only": _business_api_only,
    "web_first": _web_first,
    "business_api_first": _business_api_first,
}


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
    return _as_template("fallback to business_api: the Web session went down mid-send", roads, cloud_tpl)
