"""A claimed batch -> outcomes now and send chains on the governor (messaging/batch.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace
from typing import Any

from control_plane.db.engine import utcnow
from control_plane.messaging.batch import BatchPlanner
from control_plane.messaging.governor import Governor
from control_plane.messaging.routing import CLOUD, WEB, Roads
from control_plane.messaging.tenant_context import TenantContext
from control_plane.providers.graph_types import CloudCredentials

SETTINGS = SimpleNamespace(
    messaging_max_attempts=5,
    messaging_retry_base_s=2.0,
    messaging_retry_cap_s=60.0,
    messaging_reconcile_s=90.0,
)
CREDS = CloudCredentials("106540352242922", "102290129340398", "token")


def row(n: int, wa_id: str, kind: str = "text", requested: str = "auto", **content: Any) -> dict[str, Any]:
    return {
        "message_id": f"{n:032x}",
        "wa_id": wa_id,
        "type": kind,
        "requested_provider": requested,
        "content": content or {"text": "x"},
        "last_inbound_at": utcnow() - dt.timedelta(hours=1),
        "attempts": 1,
        "conversation_id": n,
    }


def ctx(policy: str, *, web_ready: bool = False, active: bool = True) -> TenantContext:
    roads = Roads(policy=policy, web_ready=web_ready, web_state="qr", cloud_configured=True)
    return TenantContext(roads=roads, creds=CREDS, loaded_at=0.0, active=active)


async def test_cloud_sends_chain_per_recipient_in_order_and_pair_limit_defers():
    governor = Governor(cloud_rate_per_s=100, pair_interval_s=6.0, pair_burst=2)
    rows = [row(1, "1555"), row(2, "1666"), row(3, "1555"), row(4, "1555"), row(5, "1666", kind="reaction")]
    plan = await BatchPlanner(governor, SETTINGS).plan("t", ctx("business_api_only"), rows)
    assert [o["message_id"] for o in plan.immediate] == [rows[3]["message_id"]]  # 3rd to 1555 in 6 s
    (paced,) = plan.immediate
    assert paced["kind"] == "defer" and paced["provider"] == CLOUD and "pair limit to 1555" in paced["reason"]
    assert list(plan.chains) == [(CLOUD, "1555"), (CLOUD, "1666")]
    assert [r["message_id"] for r, _, _ in plan.chains[(CLOUD, "1555")]] == [
        rows[0]["message_id"],
        rows[2]["message_id"],
    ]
    slots = sorted(at for chain in plan.chains.values() for _, _, at in chain)
    assert plan.last == slots[-1] and slots[-1] - slots[0] > 0.02  # evenly spaced, not a burst
    assert not plan.waits_for_web


async def test_fail_wait_and_held_are_outcomes_now():
    governor = Governor()
    plan = await BatchPlanner(governor, SETTINGS).plan(
        "t", ctx("web_only"), [row(1, "1555"), row(2, "1555", kind="template", name="t", language="en")]
    )
    assert [o["kind"] for o in plan.immediate] == ["retry", "failed"]
    assert plan.immediate[0]["error_code"] == "web_not_ready" and plan.waits_for_web
    assert plan.immediate[1]["error_code"] == "unsupported_on_web"
    assert plan.chains == {} and plan.last <= asyncio.get_running_loop().time()

    held = await BatchPlanner(governor, SETTINGS).plan("t", ctx("web_only", active=False), [row(3, "1555")])
    assert [(o["kind"], o["reason"]) for o in held.immediate] == [
        ("defer", "held: the tenant is deactivated")
    ]


async def test_web_sends_book_the_sessions_schedule():
    governor = Governor(web_rate_per_s=10.0)
    plan = await BatchPlanner(governor, SETTINGS).plan(
        "t", ctx("web_first", web_ready=True), [row(1, "1555"), row(2, "1555")]
    )
    ((key, chain),) = plan.chains.items()
    assert key == (WEB, "1555") and [d.provider for _, d, _ in chain] == [WEB, WEB]
    assert chain[1][2] - chain[0][2] >= 0.1  # 10/s, every gap stretched 1.0-1.6x
