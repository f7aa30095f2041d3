"""Dispatch benchmark: 20 tenants, each with its own Cloud API number, against the fake Graph API.

    .venv/bin/python bench/dispatch_bench.py                    # 20 tenants x 80 msg/s, 12 s of work
    .venv/bin/python bench/dispatch_bench.py --tenants 20 --rate 80 --seconds 12

A throwaway MariaDB database is migrated and pre-filled (every tenant's outbox holds rate x seconds
text messages to distinct recipients whose 24 h window is open). Then the real control plane
(``python -m control_plane serve``, its own process) dispatches them to the fake Graph API (its own
process, ``python -m tests.fakes.graph_api --no-window``, which also answers 130429 if a number goes
over its limit in any sliding one-second window). The three share this machine's cores.

Prints, per number: messages, the sustained rate (middle 80 % of its sends, by our sent_at: when the
Graph API answered) against the configured limit, the same by the fake's own accept times, the most
sends the fake saw in any sliding one-second window, its 130429 answers and the longest pause between
two sends; then the aggregate rate, retries and duplicates (sends sharing a biz_opaque_callback_data),
and the CPU the control plane, the fake and MariaDB spent per message. Targets: >= 95 % of each
number's limit, aggregate >= 1,000 msg/s, zero duplicates, no window over the limit.
Needs MariaDB (TEST_MARIADB_SERVER, default mysql://root@127.0.0.1:3306).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa

from control_plane.config import normalize_database_url
from control_plane.crypto import SecretBox
from control_plane.db import Database, utcnow
from control_plane.db import outbox as outbox_db
from control_plane.db import tenants as tenants_db
from control_plane.db import whatsapp_config as config_db
from control_plane.migrations import runner

MARIADB_SERVER = os.environ.get("TEST_MARIADB_SERVER", "mysql://root@127.0.0.1:3306")
ADMIN_TOKEN = "bench-admin-token-" + "x" * 16
SECRET_KEY = "bench-secret-key-" + "y" * 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def prefill(url: str, tenants: int, per_tenant: int, fake_url: str) -> list[dict]:
    db = Database(url)
    box = SecretBox(SECRET_KEY)
    made = []
    try:
        for t in range(tenants):
            pnid, waba, token = str(10**14 + t), str(2 * 10**14 + t), "EAAG-" + secrets.token_hex(12)
            async with db.begin() as conn:
                tenant = await tenants_db.create_tenant(conn, f"bench-{t}")
                await config_db.save_whatsapp_config(
                    conn,
                    tenant["id"],
                    {
                        "api_type": "business_api",
                        "fallback_policy": "business_api_only",
                        "phone_number_id": pnid,
                        "waba_id": waba,
                        "access_token_enc": box.encrypt(token),
                        "is_active": True,
                    },
                )
            made.append({"id": tenant["id"], "pnid": pnid, "waba": waba, "token": token})
            for start in range(0, per_tenant, 2000):
                items = [
                    {
                        "wa_id": f"1{t:03d}{i:07d}",
                        "type": "text",
                        "content": {"text": f"bench {t}.{i}", "preview_url": False},
                    }
                    for i in range(start, min(per_tenant, start + 2000))
                ]
                async with db.begin() as conn:
                    await outbox_db.enqueue_many(conn, tenant["id"], items)
            async with db.begin() as conn:  # every contact wrote within 24 h: free-form is allowed
                await conn.execute(
                    sa.text("UPDATE conversations SET last_inbound_at = :at WHERE tenant_id = :t"),
                    {"at": utcnow(), "t": tenant["id"]},
                )
    finally:
        await db.close()
    return made


def sustained(times: list[float]) -> float:
    """Sends per second over the middle 80 % of a number's sends (times in seconds, ascending)."""
    n = len(times)
    lo, hi = int(n * 0.1), int(n * 0.9)
    return (hi - lo - 1) / (times[hi - 1] - times[lo]) if n > 10 and times[hi - 1] > times[lo] else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument(
        "--rate", type=float, default=80.0, help="each number's limit, msg/s (CLOUD_RATE_PER_S)"
    )
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="work queued per number, in seconds at its limit"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the headline figures as one JSON line, last"
    )
    args = parser.parse_args()
    per_tenant = int(args.rate * args.seconds)
    total = per_tenant * args.tenants

    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        normalize_database_url("x", MARIADB_SERVER + "/mysql").replace("aiomysql", "pymysql")
    )
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    url = normalize_database_url("x", f"{MARIADB_SERVER}/{name}")
    engine = sa.create_engine(url.replace("aiomysql", "pymysql"))
    procs: list[subprocess.Popen] = []
    try:
        runner.upgrade(url)
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.graph_api", "--no-window"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(fake)
        line = fake.stdout.readline().strip()
        fake_url = line.split("=", 1)[1]
        print(
            f"fake Graph API at {fake_url}; "
            f"filling {args.tenants} outboxes with {per_tenant} messages each ...",
            flush=True,
        )
        made = asyncio.run(prefill(url, args.tenants, per_tenant, fake_url))
        for t in made:
            http_json(
                "POST",
                fake_url + "/_fake/numbers",
                {
                    "phone_number_id": t["pnid"],
                    "waba_id": t["waba"],
                    "token": t["token"],
                    "rate_limit": int(args.rate),
                },
            )
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "SECRET_KEY": SECRET_KEY,
            "GRAPH_API_URL": fake_url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "SUPERVISOR_ENABLED": "false",
            "LOG_LEVEL": "INFO",
            "CLOUD_RATE_PER_S": str(args.rate),
            "MESSAGING_POLL_S": "0.5",
            "DATA_DIR": f"/tmp/{name}",
            "SESSIONS_DIR": f"/tmp/{name}/s",
        }
        started = time.monotonic()
        prof = (
            ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
        )
        cp = subprocess.Popen([sys.executable, *prof, "-m", "control_plane", "serve"], cwd=ROOT, env=env)
        procs.append(cp)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        import psutil

        watched = {"control plane": psutil.Process(cp.pid), "fake": psutil.Process(fake.pid)}
        mariadb = [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("mariadbd", "mysqld")]
        if mariadb:  # shared with anything else using the server meanwhile
            watched["MariaDB"] = mariadb[0]
        cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
        print(
            f"control plane up in {time.monotonic() - started:.1f} s; dispatching {total} messages ...",
            flush=True,
        )
        last, last_change = -1, time.monotonic()
        while True:
            time.sleep(1.0)
            with engine.connect() as conn:
                done = conn.execute(sa.text("SELECT COUNT(*) FROM outbox WHERE state = 'done'")).scalar()
            print(f"  {done:6d} / {total} recorded", flush=True)
            if done >= total:
                break
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > 30:
                print("no progress for 30 s; giving up", flush=True)
                break
        cpu = {name: sum(p.cpu_times()[:2]) - cpu0[name] for name, p in watched.items()}
        stats = http_json("GET", fake_url + "/_fake/stats")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT c.phone_number_id, m.sent_at FROM messages m JOIN whatsapp_config c "
                    "ON c.tenant_id = m.tenant_id WHERE m.status = 'sent' ORDER BY m.sent_at"
                )
            ).all()
            statuses = dict(
                conn.execute(sa.text("SELECT status, COUNT(*) FROM messages GROUP BY status")).all()
            )
            retries = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM message_transitions"
                    " WHERE to_status = 'queued' AND from_status = 'sending'"
                )
            ).scalar()
            throttled = conn.execute(
                sa.text("SELECT COUNT(*) FROM message_transitions WHERE error_code = '130429'")
            ).scalar()
        per_number: dict[str, list] = {}
        for pnid, at in rows:
            per_number.setdefault(pnid, []).append(at.timestamp())
        print()
        print(
            f"{'number':>16} {'sent':>6} {'rate/s':>7} {'% limit':>8} {'at fake':>8} {'max in 1 s':>10} "
            f"{'130429':>6} {'longest gap':>11}"
        )
        pct_all, over = [], []
        first_all, last_all = None, None
        for t in made:
            times = per_number.get(t["pnid"], [])
            fake_n = stats["numbers"].get(t["pnid"], {})
            rate = sustained(times)
            fake_times = fake_n.get("times", [])
            fake_rate = sustained(fake_times)
            gap = max((b - a for a, b in itertools.pairwise(fake_times)), default=0.0)
            fake_max = fake_n.get("max_per_second", 0)
            pct = 100 * rate / args.rate
            pct_all.append(pct)
            if fake_max > args.rate:
                over.append(t["pnid"])
            if times:
                first_all = min(first_all or times[0], times[0])
                last_all = max(last_all or times[-1], times[-1])
            print(
                f"{t['pnid']:>16} {len(times):6d} {rate:7.1f} {pct:7.1f}% "
                f"{100 * fake_rate / args.rate:7.1f}% "
                f"{fake_max:10d} {fake_n.get('throttled', 0):6d} {1000 * gap:8.0f} ms"
            )
        span = (last_all - first_all) if first_all and last_all else 0.0
        aggregate = len(rows) / span if span else 0.0
        print()
        print(
            f"aggregate: {len(rows)} sent in {span:.2f} s = {aggregate:.0f} msg/s "
            f"(target >= 1000; configured total {args.rate * args.tenants:.0f})"
        )
        print(
            f"per number: min {min(pct_all):.1f}% / median {statistics.median(pct_all):.1f}% of the limit "
            "(target >= 95%)"
        )
        print(
            f"fake: {stats['sent']} accepted, duplicates {stats['duplicates']} (target 0); "
            f"numbers over the limit in some 1 s window: {len(over)} (target 0)"
        )
        print(f"statuses: {statuses}; retries {retries}; 130429 answers {throttled}")
        print(
            "CPU seconds while dispatching: "
            + ", ".join(f"{k} {v:.1f} s ({1e6 * v / max(1, len(rows)):.0f} us/msg)" for k, v in cpu.items())
            + f"; machine load {os.getloadavg()[0]:.1f}"
        )
        ok = (
            min(pct_all) >= 95
            and aggregate >= 1000
            and stats["duplicates"] == 0
            and not over
            and stats["sent"] == total
        )
        print("RESULT:", "PASS" if ok else "FAIL")
        if args.json:
            figures = {
                "msg_s": aggregate,
                "min_pct_limit": min(pct_all),
                "median_pct_limit": statistics.median(pct_all),
                "duplicates": stats["duplicates"],
                "numbers_over_limit": len(over),
                "retries": retries,
                **{
                    f"cpu_{k.replace(' ', '_')}_us_per_msg": 1e6 * v / max(1, len(rows))
                    for k, v in cpu.items()
                },
            }
            print(json.dumps(figures), flush=True)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


if __name__ == "__main__":
    main()
