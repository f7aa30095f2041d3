"""kill -9 of MariaDB under webhook load: a real control plane process (``python -m control_plane
serve``, as bench/crash_bench.py runs it) on a PRIVATE throwaway mariadbd (tests/chaos/private_mariadb.py;
the shared server is never touched), signed deliveries posted without pause by a few concurrent
senders; the server is killed with SIGKILL mid-load, kept down until the control plane has refused
deliveries, restarted on the same datadir (crash recovery), and the load goes on.

Then Meta's side redelivers every delivery that was not answered 200 (refused or unanswered), and:
every delivery ever answered 200 is stored exactly once (0 acknowledged but lost), every message of
every delivery is stored exactly once after the redeliveries (0 duplicates), and nothing was
answered 200 while the database was down (it could not have been stored)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import pytest

from bench.crash_bench import ControlPlane, _env, _setup_tenant
from control_plane.config import normalize_database_url
from control_plane.migrations import runner
from tests.chaos.private_mariadb import PrivateMariaDB
from tests.fakes import graph_api as g

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(240)]

SENDERS = 4
MESSAGES_PER_DELIVERY = 2
BEFORE_KILL = 150  # acknowledged deliveries before the kill
REFUSED_DURING_OUTAGE = 10  # the database stays down until this many were refused
DOWN_S = 1.0  # and for at least this long
AFTER_RECOVERY = 150  # acknowledged deliveries after the restart
USER = "16505551234"


@dataclass
class Delivery:
    wamids: list[str]
    body: bytes
    statuses: list[int | str] = field(default_factory=list)  # an HTTP status or "no answer"
    acked_at: float | None = None


class Load:
    """Signed deliveries posted back to back by ``SENDERS`` concurrent senders."""

    def __init__(self, url: str, tenant: dict[str, str]) -> None:
        self.url, self.tenant = url, tenant
        self.deliveries: list[Delivery] = []
        self.acked = 0
        self.refused_5xx = 0
        self.unanswered = 0
        self.down: tuple[float, float] | None = None  # (killed, restarting): nothing posted then is storable
        self.acked_while_down = 0
        self.stop = False

    def new(self) -> Delivery:
        n = len(self.deliveries)
        messages = [
            g.text_message(USER, f"load {n}.{i}", wamid=f"wamid.chaos{n:05d}x{i}{secrets.token_hex(8)}")
            for i in range(MESSAGES_PER_DELIVERY)
        ]
        payload = g.messages_payload(self.tenant["waba"], self.tenant["pnid"], messages=messages)
        delivery = Delivery([m["id"] for m in messages], g.serialize(payload))
        self.deliveries.append(delivery)
        return delivery

    async def post(self, http: aiohttp.ClientSession, delivery: Delivery) -> int | str:
        posted = time.monotonic()
        try:
            status, _ = await g.deliver(self.url, delivery.body, self.tenant["app_secret"], session=http)
        except (aiohttp.ClientError, TimeoutError):
            self.unanswered += 1
            delivery.statuses.append("no answer")
            return "no answer"
        delivery.statuses.append(status)
        if status == 200:
            self.acked += 1
            delivery.acked_at = delivery.acked_at or time.monotonic()
            if self.down is not None and self.down[0] < posted < self.down[1]:
                self.acked_while_down += 1
        elif status >= 500:
            self.refused_5xx += 1
        return status

    async def sender(self) -> None:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self.stop:
                status = await self.post(http, self.new())
                if status != 200:
                    await asyncio.sleep(0.02)  # Meta backs off a little too

    async def until(self, pred, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}: acked {self.acked}, "
                    f"5xx {self.refused_5xx}, unanswered {self.unanswered}"
                )
            await asyncio.sleep(0.02)


@pytest.fixture
def private_mariadb():
    server = PrivateMariaDB()
    try:
        server.install()
        server.start()
        yield server
    finally:
        server.close()


async def test_kill9_of_mariadb_under_webhook_load_loses_no_acknowledged_delivery(
    private_mariadb, tmp_path, figures
):
    db = private_mariadb
    db.execute("CREATE DATABASE gw CHARACTER SET utf8mb4")
    url = normalize_database_url("DATABASE_URL", f"{db.server_url}/gw")
    await asyncio.to_thread(runner.upgrade, url)
    env = _env(url, tmp_path, 80.0, {"LOG_LEVEL": "WARNING"})
    cp = ControlPlane(env, tmp_path / "cp.log")
    senders: list[asyncio.Task] = []
    try:
        async with g.FakeGraphAPI() as fake, aiohttp.ClientSession() as http:
            env["GRAPH_API_URL"] = fake.url
            await cp.start(http)
            tenant = await _setup_tenant(http, cp.url, fake)
            load = Load(cp.url + "/api/whatsapp/webhook", tenant)
            senders = [asyncio.create_task(load.sender()) for _ in range(SENDERS)]
            await load.until(lambda: load.acked >= BEFORE_KILL, "deliveries before the kill", 60)

            db.kill9()
            killed_at, acked_at_kill = time.monotonic(), load.acked
            load.down = (killed_at, float("inf"))
            await load.until(
                lambda: load.refused_5xx >= REFUSED_DURING_OUTAGE and time.monotonic() > killed_at + DOWN_S,
                "refusals during the outage",
                60,
            )
            refused_at = time.monotonic()
            load.down = (killed_at, refused_at)
            restart_s = await asyncio.to_thread(db.start)
            up_at = time.monotonic()
            await load.until(lambda: load.acked > acked_at_kill, "the first acknowledgement after", 60)
            first_ack_at = time.monotonic()
            await load.until(lambda: load.acked >= acked_at_kill + AFTER_RECOVERY, "the load after", 90)
            load.stop = True
            await asyncio.gather(*senders)
            assert cp.proc is not None and cp.proc.poll() is None, "the control plane died"

            # Meta redelivers what was not acknowledged, until it is
            redelivered = 0
            timeout = aiohttp.ClientTimeout(total=15)
            async with aiohttp.ClientSession(timeout=timeout) as retry:
                for delivery in load.deliveries:
                    deadline = time.monotonic() + 30
                    while delivery.acked_at is None:
                        assert time.monotonic() < deadline, f"never acknowledged: {delivery.statuses}"
                        redelivered += 1
                        if await load.post(retry, delivery) != 200:
                            await asyncio.sleep(0.1)
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        cp.stop()

    stored = Counter(
        dict(
            db.execute(
                "SELECT provider_message_id, COUNT(*) FROM messages GROUP BY provider_message_id", "gw"
            )
        )
    )
    acked = [d for d in load.deliveries if 200 in d.statuses]
    acked_first_time = [d for d in load.deliveries if d.statuses[0] == 200]
    lost = [w for d in acked_first_time for w in d.wamids if stored[w] == 0]
    duplicates = [w for w, n in stored.items() if n > 1]
    never = [w for d in load.deliveries for w in d.wamids if stored[w] == 0]
    figures(
        "kill -9 of MariaDB under webhook load",
        deliveries=len(load.deliveries),
        acked_first_time=len(acked_first_time),
        refused_5xx=load.refused_5xx,
        unanswered=load.unanswered,
        redelivered=redelivered,
        acked_but_lost=len(lost),
        duplicates=len(duplicates),
        acked_while_down=load.acked_while_down,
        down_s=round(refused_at - killed_at, 2),
        mariadb_restart_s=round(restart_s, 2),
        first_ack_after_restart_s=round(first_ack_at - up_at, 2),
        kill_to_first_ack_s=round(first_ack_at - killed_at, 2),
    )
    assert lost == [], f"acknowledged but not stored: {lost[:10]}"
    assert duplicates == [], f"stored more than once: {duplicates[:10]}"
    assert never == [] and len(acked) == len(load.deliveries)
    assert load.acked_while_down == 0
    assert sum(stored.values()) == len(load.deliveries) * MESSAGES_PER_DELIVERY
    assert load.refused_5xx >= REFUSED_DURING_OUTAGE and db.starts == 2
