"""A contact known only by its business-scoped user id (BSUID) is reachable only through the Cloud
API: routing sends it there, or fails with a clear code when the tenant has no Cloud API road; the
Web road refuses it itself (pure: no I/O)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from control_plane.messaging import routing
from control_plane.messaging.models import normalize_number
from control_plane.providers.base import CLOUD, WEB, Failed, OutboundMessage
from control_plane.providers.web import WebProvider

pytestmark = pytest.mark.smoke
BSUID = "US.13491208655302741918"
NOW = dt.datetime(2026, 6, 1, 12, 0)


def _decide(policy: str, *, cloud: bool, bsuid: bool = True, requested: str = "auto") -> routing.Decision:
    roads = routing.Roads(policy=policy, web_ready=True, web_state="ready", cloud_configured=cloud)
    return routing.decide(
        kind="text",
        requested=requested,
        roads=roads,
        last_inbound_at=NOW - dt.timedelta(minutes=5),
        now=NOW,
        bsuid_recipient=bsuid,
    )


@pytest.mark.parametrize("policy", ["web_first", "business_api_first", "business_api_only"])
def test_a_bsuid_goes_by_the_cloud_api(policy):
    decision = _decide(policy, cloud=True)
    assert (decision.action, decision.provider) == (routing.SEND, CLOUD)
    assert _decide("web_first", cloud=True, bsuid=False).provider == WEB  # a phone number: the session


@pytest.mark.parametrize(("policy", "requested"), [("web_only", "auto"), ("web_first", "web")])
def test_no_cloud_api_road_fails_with_a_clear_code(policy, requested):
    decision = _decide(policy, cloud=policy != "web_only", requested=requested)
    assert (decision.action, decision.error_code) == (routing.FAIL, "bsuid_needs_business_api")
    assert "BSUID" in decision.reason


async def test_the_web_road_refuses_a_bsuid():
    class Sessions:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        async def send(self, tenant_id: str, args: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(args)
            return {"id": "x"}

    async def resolve(tenant_id: str, ref: str, provider: str) -> str:
        return ref

    sessions = Sessions()
    outcome = await WebProvider(sessions, resolve).send(
        OutboundMessage("t", "0" * 32, BSUID, "text", {"text": "hi"})
    )
    assert isinstance(outcome, Failed) and outcome.code == "bsuid_needs_business_api"
    assert sessions.calls == []


def test_the_api_takes_a_bsuid_as_it_is():
    assert normalize_number(f" {BSUID} ") == BSUID
    assert normalize_number("+1 (650) 555-1234") == "16505551234"
