"""Unauthenticated floods of the webhook (issue 15): forged deliveries naming thousands of unknown
numbers, or nested deep or wide, are refused or acknowledged cheaply, never stall the event loop, and
never write a log line per number; legitimate signed deliveries and /healthz keep answering meanwhile.

Bounds are generous (a shared 2-core machine); the figures on a quiet machine are the bench's
(``bench/abuse_bench.py``). Before the fix one 40,000-number delivery held the loop ~5 s and wrote
40,001 lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from asyncio.subprocess import PIPE

import aiohttp
import pytest

from control_plane.app import create_app
from tests.conftest import ROOT
from tests.fakes import graph_api as g
from tests.support import wait_for
from tests.webhooks import flood

pytestmark = pytest.mark.timeout(180)

LAG_BOUND_S = 0.25  # the longest the event loop may be held by one forged delivery
FLOOD_S = 10.0
LEGIT_RATE = 20  # signed deliveries a second during the flood
LEGIT_P99_MS = 250.0
# /healthz during the flood: most polls fast, none held for seconds (before the fix: p99 2.5 s, max
# 1.9 s). The bound on the worst one is loose: in the whole suite on 2 shared cores (client, server,
# MariaDB and the flooding process at once) one poll took 678 ms; alone the worst is a few ms.
HEALTH_P95_MS = 250.0
HEALTH_MAX_MS = 1500.0
FLOOD_LAG_BOUND_S = 1.0  # the longest stall in 10 s of flood (before the fix: seconds)
USER = "16505551234"


class LoopLag:
    """The longest the event loop was late waking a 5 ms timer while this runs (a stall's length)."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.max_s = max(self.max_s, time.perf_counter() - start - 0.005)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _unknown_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unknown phone_number_id" in r.getMessage()]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def test_a_40k_unknown_number_delivery_is_refused_without_stalling(
    app_client, webhook_url, caplog, figures
):
    """The probe's first defect: 2.9 MB, 40,000 fresh unknown numbers, a forged signature."""
    caplog.set_level(logging.INFO, logger="control_plane")
    body = flood.unknown_numbers(40_000, 1)
    assert 2_500_000 < len(body) < app_client.server.app["settings"].webhook_max_body_bytes
    async with LoopLag() as lag:
        status, text = await g.deliver(webhook_url, body, "x", signature=flood.fake_signature())
    figures(
        "40,000 unknown numbers, forged signature",
        bytes=len(body),
        status=status,
        loop_held_ms=round(lag.max_s * 1000, 1),
    )
    assert status == 413 and json.loads(text)["error"]["code"] == "too_many_ids", text
    assert lag.max_s < LAG_BOUND_S, f"event loop held {lag.max_s:.3f} s"
    assert len(_unknown_lines(caplog)) <= 1
    assert app_client.server.app["webhook_counters"].too_many_ids == 1


async def test_unknown_numbers_under_the_cap_are_one_query_one_line_and_cached(
    app_client, webhook_url, business_tenant, caplog, db_rows
):
    """4,000 unknown numbers (under the cap): 200, nothing stored, counted, ONE log line; the same
    numbers again are answered by the directory's negative cache."""
    caplog.set_level(logging.INFO, logger="control_plane")
    await business_tenant()
    app = app_client.server.app
    body = flood.unknown_numbers(4_000, 2, with_status=True)
    async with LoopLag() as lag:
        status, text = await g.deliver(webhook_url, body, "x", signature=flood.fake_signature())
        assert status == 200, text
        ack = json.loads(text)
        assert ack["unknown_phone_number_ids"] == 4_000 and ack["statuses"] == 0 and ack["messages"] == 0
        status, _ = await g.deliver(webhook_url, body, "x", signature=flood.fake_signature())
        assert status == 200
    assert lag.max_s < LAG_BOUND_S, f"event loop held {lag.max_s:.3f} s"
    assert len(_unknown_lines(caplog)) <= 2  # one per delivery at most (the second within a second: 0)
    assert app["webhook_counters"].unknown_only == 2
    assert app["webhook_directory"].cached("70000000200000") is None  # known unknown, for a few seconds
    assert db_rows("SELECT COUNT(*) AS n FROM messages")[0]["n"] == 0
    assert db_rows("SELECT COUNT(*) AS n FROM message_statuses")[0]["n"] == 0


async def test_nested_deliveries_are_refused_or_read_off_the_loop(app_client, webhook_url):
    async with LoopLag() as lag:
        status, text = await g.deliver(webhook_url, flood.deep(), "x", signature=flood.fake_signature())
        assert status == 400 and json.loads(text)["error"]["code"] == "too_deep"
        # valid JSON, 1.3 million arrays: read by the decoder's worker process, names nobody
        status, text = await g.deliver(webhook_url, flood.wide(), "x", signature=flood.fake_signature())
        assert status == 200 and json.loads(text)["unknown_phone_number_ids"] == 0, text
        status, text = await g.deliver(
            webhook_url, flood.wide(depth=70), "x", signature=flood.fake_signature()
        )
        assert status == 400 and json.loads(text)["error"]["code"] == "too_deep"
    assert lag.max_s < LAG_BOUND_S, f"event loop held {lag.max_s:.3f} s"
    assert app_client.server.app["webhook_decoder"].offloaded >= 2


async def test_a_known_number_with_a_forged_signature_is_refused_before_it_is_read(
    app_client, webhook_url, business_tenant, db_rows
):
    """Naming a real tenant's number among thousands of unknown ones does not get a forged delivery
    parsed: the signature is checked as soon as the tenant is known."""
    tenant = await business_tenant()
    counters = app_client.server.app["webhook_counters"]
    body = flood.unknown_numbers(3_000, 3).replace(b'"70000000300000"', b'"%s"' % tenant["pnid"].encode())
    body = body.replace(b'"messages":[]', b'"messages":[{}]')  # one malformed item a change
    status, text = await g.deliver(webhook_url, body, "not-" + tenant["app_secret"])
    assert status == 401 and "invalid_signature" in text
    assert counters.skipped_items == 0  # not parsed: its items were never looked at
    # signed with the tenant's secret, the same delivery is read whole: its number is routed
    status, text = await g.deliver(webhook_url, body, tenant["app_secret"])
    assert status == 200 and json.loads(text)["unknown_phone_number_ids"] == 2_999, text
    assert counters.skipped_items == 3_000
    assert db_rows("SELECT COUNT(*) AS n FROM messages")[0]["n"] == 0


class LegitLoad:
    """Signed deliveries at ``LEGIT_RATE`` and /healthz polled every 10 ms, timed from the client."""

    def __init__(self, app_client, send: g.WebhookSender, pnid: str) -> None:
        self.client, self.send, self.pnid = app_client, send, pnid
        self.legit_ms: list[float] = []
        self.health_ms: list[float] = []
        self.statuses: list[int] = []

    async def legit(self, n: int) -> None:
        start = time.perf_counter()
        delivery = await self.send.inbound(self.pnid, g.text_message(USER, f"during the flood {n}"))
        self.legit_ms.append((time.perf_counter() - start) * 1000)
        self.statuses.append(delivery.status)

    async def health(self, session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            start = time.perf_counter()
            async with session.get(self.client.make_url("/healthz")) as resp:
                assert resp.status == 200
            self.health_ms.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.01)

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            poller = asyncio.create_task(self.health(session, until))
            tasks = []
            for n in range(int(seconds * LEGIT_RATE)):
                tasks.append(asyncio.create_task(self.legit(n)))
                await asyncio.sleep(1 / LEGIT_RATE)
            await asyncio.gather(poller, *tasks)


async def _flooded(webhook_url: str, load: LegitLoad) -> dict[str, dict[str, int]]:
    """Run ``load`` while another process floods the webhook; the flood's statuses per kind."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.webhooks.flood", webhook_url, str(FLOOD_S), cwd=ROOT, stdout=PIPE
    )
    try:
        await load.run(FLOOD_S)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return json.loads(out)


async def test_legitimate_webhooks_and_healthz_stay_fast_during_a_flood(
    app_client, webhook_url, business_tenant, sender, db_rows, caplog, figures
):
    caplog.set_level(logging.INFO, logger="control_plane")
    tenant = await business_tenant()
    warm = LegitLoad(app_client, sender(tenant), tenant["pnid"])
    for n in range(5):  # connections, caches, the directory
        await warm.legit(-n - 1)
    load = LegitLoad(app_client, sender(tenant), tenant["pnid"])
    async with LoopLag() as lag:  # a stall also delays the /healthz poller's sleeps, unseen by it
        counts = await _flooded(webhook_url, load)

    p99, worst_health = _pct(load.legit_ms, 99), max(load.health_ms)
    figures(
        "webhook flood (unknown numbers, deep and wide JSON) vs legitimate load",
        flood={kind: sum(c.values()) for kind, c in counts.items()},
        legit=len(load.legit_ms),
        legit_p50_ms=round(_pct(load.legit_ms, 50), 1),
        legit_p99_ms=round(p99, 1),
        healthz_p95_ms=round(_pct(load.health_ms, 95), 1),
        healthz_max_ms=round(worst_health, 1),
        loop_stall_max_ms=round(lag.max_s * 1000, 1),
    )
    assert set(counts["ids40k"]) == {"413"} and set(counts["deep"]) == {"400"}, counts
    assert set(counts["ids1k"]) == {"200"}, counts
    assert load.statuses and all(s == 200 for s in load.statuses), load.statuses
    assert p99 < LEGIT_P99_MS, f"legitimate webhooks p99 {p99:.1f} ms during the flood"
    health_p95 = _pct(load.health_ms, 95)
    assert health_p95 < HEALTH_P95_MS, f"/healthz p95 {health_p95:.1f} ms during the flood"
    assert worst_health < HEALTH_MAX_MS, f"/healthz took {worst_health:.1f} ms during the flood"
    assert lag.max_s < FLOOD_LAG_BOUND_S, f"event loop held {lag.max_s:.3f} s during the flood"
    # O(deliveries), not O(numbers): each flood delivery named 40,000 or 1,000 numbers
    assert len(_unknown_lines(caplog)) <= sum(sum(c.values()) for c in counts.values())
    stored = len(load.statuses) + 5
    await wait_for(
        lambda: (
            db_rows("SELECT COUNT(*) AS n FROM messages WHERE tenant_id = :t", t=tenant["id"])[0]["n"]
            == stored
        ),
        message="every legitimate delivery stored",
    )
    assert db_rows("SELECT COUNT(*) AS n FROM messages")[0]["n"] == stored  # and nothing else
    assert db_rows("SELECT COUNT(*) AS n FROM message_statuses")[0]["n"] == 0


async def test_a_small_delivery_is_capped_and_counted_only_once_its_signature_holds(
    aiohttp_client, make_settings, fake, empty_db
):
    """A body under WEBHOOK_INLINE_DECODE_BYTES is parsed whole before its signature is checked (its
    ids read from that parse): the same 413 past the cap, and nothing of it counted (items, changes)
    until a tenant's signature holds."""
    client = await aiohttp_client(
        create_app(make_settings(GRAPH_API_URL=fake.url, WEBHOOK_MAX_ROUTING_IDS="5"))
    )
    url = str(client.make_url("/api/whatsapp/webhook"))
    app = client.server.app
    small = flood.unknown_numbers(6, 4)
    assert len(small) < app["settings"].webhook_inline_decode_bytes
    status, text = await g.deliver(url, small, "x", signature=flood.fake_signature())
    assert status == 413 and json.loads(text)["error"]["code"] == "too_many_ids", text
    assert app["webhook_counters"].too_many_ids == 1
    body = flood.unknown_numbers(5, 5).replace(b'"messages":[]', b'"messages":[{}]')  # malformed items
    status, text = await g.deliver(url, body, "x", signature=flood.fake_signature())
    assert status == 200 and json.loads(text)["unknown_phone_number_ids"] == 5, text
    counters = app["webhook_counters"]
    assert counters.unknown_only == 1 and counters.skipped_items == 0 and counters.ignored_changes == 0
    assert app["webhook_decoder"].offloaded == 0
