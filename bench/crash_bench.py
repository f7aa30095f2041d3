"""Crash window benchmark: kill -9 of the control plane mid-dispatch, then a restart on the same node.

    .venv/bin/python bench/crash_bench.py                     # 500 sends; Meta's status webhooks come
    .venv/bin/python bench/crash_bench.py --webhooks none     # no status webhook ever comes
    .venv/bin/python bench/compare.py --base <rev> --rounds 1 crash_bench -- --webhooks none

One tenant with a Cloud API number (the fake Graph API, in this process) has ``--messages`` text
messages queued at once (written to the outbox in one transaction). The control plane (``python -m
control_plane serve``, its own process, production settings unless given) dispatches them at
``--rate``; after ``--kill-after`` accepted sends it is killed with SIGKILL (its whole process group),
and a new one starts on the same DATA_DIR (the same node). Meanwhile this script plays Meta: with
``--webhooks all`` it delivers a signed "sent" status webhook for each accepted send
``--status-delay-s`` after it (each carries ``biz_opaque_callback_data`` = our id), retrying while no
control plane answers; with ``none`` it delivers nothing. The fake answers each send after
``--graph-latency-s`` (Meta's round trip; it has accepted it by then), so a few requests are open at
the kill: accepted, their answers lost with the process.

Prints: the sends before the kill; seconds from the kill until every message is settled (status sent
or beyond), and from the restart (healthz answering) until then; duplicates (our ids the fake accepted
more than once); and how the claims left by the dead process were settled (message histories).
Needs MariaDB (TEST_MARIADB_SERVER, default mysql://root@127.0.0.1:3306). ``scenario()`` is also run
by tests/messaging/test_kill9.py with short settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp
import sqlalchemy as sa

from control_plane.config import normalize_database_url
from control_plane.db import Database, utcnow
from control_plane.db import outbox as outbox_db
from control_plane.migrations import runner
from tests.fakes import graph_api as g

MARIADB_SERVER = os.environ.get("TEST_MARIADB_SERVER", "mysql://root@127.0.0.1:3306")
ADMIN_TOKEN = "bench-admin-token-" + "x" * 16
SECRET_KEY = "bench-secret-key-" + "y" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# How the dead process's claims were settled: message_transitions.reason patterns -> figure name.
SETTLED_BY = {
    "journal_accepted": "%recovered from the send journal%",
    "journal_requeued": "%died before sending it%",
    "webhook_confirmed": "%recovered after an unknown outcome%",
    "resent_unconfirmed": "%no provider confirmation within%",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ControlPlane:
    """``python -m control_plane serve`` in its own process group, output to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    async def start(self, http: aiohttp.ClientSession, timeout_s: float = 90) -> None:
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230  (the child keeps its own copy)
            self.proc = subprocess.Popen(  # noqa: ASYNC220  (returns at once)
                [sys.executable, "-m", "control_plane", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited: {self.log_path.read_text()[-3000:]}")
            try:
                async with http.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("control plane not up")
            await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class SlowAnswers(g.FakeGraphAPI):
    """The fake Graph API answering each send ``latency_s`` after it has accepted it (Meta's round
    trip): a client that dies meanwhile never learns the answer."""

    latency_s = 0.1

    async def _messages(self, request: Any, owned: set[str], endpoint: str) -> Any:
        response = await super()._messages(request, owned, endpoint)
        await asyncio.sleep(self.latency_s)
        return response


class Meta:
    """Delivers a "sent" status webhook for each send the fake accepted, ``delay_s`` after it, to
    whichever control plane answers (Meta retries a failed delivery)."""

    def __init__(self, fake: g.FakeGraphAPI, waba: str, pnid: str, app_secret: str, delay_s: float) -> None:
        self.fake, self.waba, self.pnid, self.app_secret, self.delay_s = fake, waba, pnid, app_secret, delay_s
        self.target: str | None = None
        self.delivered = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.sleep(0.05)
                due = [r for r in self.fake.sent[self.delivered :] if r["at"] <= time.time() - self.delay_s]
                if not due or self.target is None:
                    continue
                items = [
                    g.status(
                        r["wamid"], "sent", r["to"], biz_opaque_callback_data=r["biz_opaque_callback_data"]
                    )
                    for r in due[:100]
                ]
                try:
                    code, _ = await g.deliver(
                        self.target,
                        g.messages_payload(self.waba, self.pnid, statuses=items),
                        self.app_secret,
                        session=http,
                    )
                except aiohttp.ClientError:
                    continue  # nobody answers: try again
                if code == 200:
                    self.delivered += len(items)


async def _setup_tenant(http: aiohttp.ClientSession, url: str, fake: g.FakeGraphAPI) -> dict[str, str]:
    async with http.post(url + "/api/tenants", json={"name": "crash-bench"}, headers=ADMIN) as resp:
        tenant = await resp.json()
    pnid, waba, token = "106540352242922", "102290129340398", "EAAG-" + secrets.token_hex(8)
    app_secret = "secret-" + secrets.token_hex(8)
    fake.add_number(pnid, waba, token)
    body = {
        "api_type": "business_api",
        "fallback_policy": "business_api_only",
        "phone_number_id": pnid,
        "waba_id": waba,
        "access_token": token,
        "app_secret": app_secret,
        "verify_token": "verify-" + secrets.token_hex(8),
    }
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    async with http.post(url + "/api/whatsapp/config", headers=headers, json=body) as resp:
        assert resp.status == 201, await resp.text()
    return {"id": tenant["id"], "pnid": pnid, "waba": waba, "app_secret": app_secret}


async def _enqueue(database_url: str, tenant_id: str, n: int) -> list[str]:
    """``n`` text messages to distinct contacts who wrote within 24 h, queued in one transaction."""
    db = Database(database_url)
    try:
        items = [
            {"wa_id": f"1650{i:07d}", "type": "text", "content": {"text": f"crash {i}", "preview_url": False}}
            for i in range(n)
        ]
        async with db.begin() as conn:
            made = await outbox_db.enqueue_many(conn, tenant_id, items)
            await conn.execute(
                sa.text("UPDATE conversations SET last_inbound_at = :at WHERE tenant_id = :t"),
                {"at": utcnow(), "t": tenant_id},
            )
    finally:
        await db.close()
    return list(made)


def _settled(engine: sa.Engine, tenant_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM messages WHERE tenant_id = :t AND direction = 'outbound' "
                "AND status IN ('sent', 'delivered', 'read')"
            ),
            {"t": tenant_id},
        ).scalar()


def _settled_by(engine: sa.Engine, tenant_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(
                sa.text(
                    "SELECT COUNT(DISTINCT message_id) FROM message_transitions "
                    "WHERE tenant_id = :t AND reason LIKE :r"
                ),
                {"t": tenant_id, "r": pattern},
            ).scalar()
            for name, pattern in SETTLED_BY.items()
        }


def _env(database_url: str, work_dir: Path, rate: float, settings: dict[str, str] | None) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(work_dir / "data"),
        "SESSIONS_DIR": str(work_dir / "s"),
        "SUPERVISOR_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        "CLOUD_RATE_PER_S": str(rate),
        **(settings or {}),
    }


async def _until_sent(fake: g.FakeGraphAPI, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(fake.sent) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(fake.sent)} sends, not {count}, within {timeout_s:.0f} s")
        await asyncio.sleep(0.005)


async def _until_settled(
    engine: sa.Engine, tenant_id: str, count: int, since: float, timeout_s: float
) -> float:
    """Waits until ``count`` messages are settled; returns when 90 % of them were (monotonic)."""
    p90_at = None
    while (settled := _settled(engine, tenant_id)) < count:
        if p90_at is None and settled >= 0.9 * count:
            p90_at = time.monotonic()
        if time.monotonic() - since > timeout_s:
            raise TimeoutError(f"{settled} of {count} settled within {timeout_s:.0f} s of the kill")
        await asyncio.sleep(0.1)
    return p90_at or time.monotonic()


def _sends_per_id(fake: g.FakeGraphAPI) -> dict[str, int]:
    per_id: dict[str, int] = {}
    for record in fake.sent:
        key = record["biz_opaque_callback_data"]
        per_id[key] = per_id.get(key, 0) + 1
    return per_id


async def scenario(
    database_url: str,
    work_dir: Path,
    *,
    messages: int = 500,
    kill_after: int = 120,
    rate: float = 80.0,
    webhooks: str = "all",
    status_delay_s: float = 0.2,
    graph_latency_s: float = 0.1,
    settings: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the kill -9 scenario (see the module docstring); returns its figures."""
    engine = sa.create_engine(database_url.replace("aiomysql", "pymysql"))
    env = _env(database_url, work_dir, rate, settings)
    first, second = ControlPlane(env, work_dir / "cp1.log"), ControlPlane(env, work_dir / "cp2.log")
    meta_task: asyncio.Task | None = None
    try:
        async with SlowAnswers(enforce_window=False) as fake, aiohttp.ClientSession() as http:
            env["GRAPH_API_URL"] = fake.url
            fake.latency_s = graph_latency_s
            await first.start(http)
            tenant = await _setup_tenant(http, first.url, fake)
            meta = Meta(fake, tenant["waba"], tenant["pnid"], tenant["app_secret"], status_delay_s)
            if webhooks == "all":
                meta.target = first.url + "/api/whatsapp/webhook"
                meta_task = asyncio.create_task(meta.run())
            ids = await _enqueue(database_url, tenant["id"], messages)
            await _until_sent(fake, kill_after, timeout_s)
            first.kill9()
            t_kill = time.monotonic()
            sent_before = len(fake.sent)
            say(f"kill -9 after {sent_before} accepted sends; restarting ...")
            await second.start(http)
            t_up = time.monotonic()
            t_p90 = await _until_settled(engine, tenant["id"], messages, t_kill, timeout_s)
            t_done = time.monotonic()
            per_id = _sends_per_id(fake)
            return {
                "sent_before_kill": sent_before,
                "window_s": round(t_done - t_kill, 2),
                "p90_settled_s": round(t_p90 - t_kill, 2),
                "restart_s": round(t_up - t_kill, 2),
                "after_restart_s": round(t_done - t_up, 2),
                "duplicates": sum(1 for n in per_id.values() if n > 1),
                "extra_sends": len(fake.sent) - messages,
                "never_sent": len(set(ids) - set(per_id)),
                **_settled_by(engine, tenant["id"]),
            }
    finally:
        if meta_task is not None:
            meta_task.cancel()
        for cp in (first, second):
            cp.stop()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--kill-after", type=int, default=120, help="accepted sends before the kill")
    parser.add_argument("--rate", type=float, default=80.0, help="CLOUD_RATE_PER_S")
    parser.add_argument("--webhooks", choices=("all", "none"), default="all")
    parser.add_argument("--status-delay-s", type=float, default=0.2, help="Meta's send -> status delay")
    parser.add_argument(
        "--graph-latency-s", type=float, default=0.1, help="how long the fake takes to answer a send"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a control plane setting (e.g. MESSAGING_LEASE_S=60); production defaults otherwise",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)

    name = f"gw_crash_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        normalize_database_url("x", MARIADB_SERVER + "/mysql").replace("aiomysql", "pymysql")
    )
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    work = Path(f"/tmp/{name}")
    work.mkdir()
    try:
        url = normalize_database_url("x", f"{MARIADB_SERVER}/{name}")
        runner.upgrade(url)
        figures = asyncio.run(
            scenario(
                url,
                work,
                messages=args.messages,
                kill_after=args.kill_after,
                rate=args.rate,
                webhooks=args.webhooks,
                status_delay_s=args.status_delay_s,
                graph_latency_s=args.graph_latency_s,
                settings=settings,
            )
        )
        print(
            f"every message settled {figures['window_s']:.1f} s after the kill "
            f"(90 % after {figures['p90_settled_s']:.1f} s; "
            f"{figures['restart_s']:.1f} s to restart, {figures['after_restart_s']:.1f} s after); "
            f"duplicates {figures['duplicates']}, extra sends {figures['extra_sends']}, "
            f"never sent {figures['never_sent']}"
        )
        print("settled by: " + ", ".join(f"{k} {figures[k]}" for k in SETTLED_BY))
        if args.json:
            print(json.dumps(figures), flush=True)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
