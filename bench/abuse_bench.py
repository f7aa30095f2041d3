"""Abuse benchmark: legitimate signed webhooks and /healthz while one client floods the webhook with
unauthenticated deliveries, against the real app on MariaDB; the same legitimate load without the flood
first, as the baseline of the same run.

    .venv/bin/python bench/abuse_bench.py                        # 30 s baseline, then 30 s flooded
    .venv/bin/python bench/abuse_bench.py --duration 10 --legit-rate 20 --json
    .venv/bin/python bench/abuse_bench.py --duration 15 --kinds ids40k,deep      # some kinds only

Three client processes, started afresh per phase (so that none of them measures another's CPU work;
``--flood-nice 10`` lowers the flooding one's priority, as if the attacker's CPU were not the
server's):
- legit: signed single-text deliveries (~720 bytes, a unique wamid each, the tenant's app secret) at a
  steady rate (``--legit-rate``, sent on schedule whatever the answers take: no coordinated omission);
- health: ``GET /healthz`` back to back, 10 ms apart;
- flood (second phase only): ONE connection posting back to back, in turn,
  * ``ids40k``: 2.96 MB, 40,000 fresh phone_number_ids (never seen before: no cache can answer them),
  * ``ids1k``: 1,000 fresh phone_number_ids with a status each (under any sane cap: looked up),
  * ``deep``: nested 100,000 levels deep,
  * ``wide``: 2.66 MB of arrays nested 60 deep side by side (just under the depth limit: valid JSON
    that is costly to build and walk),
  each with a well-formed but fake ``X-Hub-Signature-256``.

Prints p50/p99/max of the legitimate webhooks and p99/max of /healthz per phase, the flood's
requests/s and statuses per kind, how many legitimate 200s were stored, and how many log lines the
app wrote about unknown numbers. Targets while flooded: legitimate p99 < 50 ms, /healthz never over
50 ms, every legitimate delivery 200 and stored, log lines about unknown numbers O(deliveries).
Needs MariaDB (TEST_MARIADB_SERVER, default mysql://root@127.0.0.1:3306).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp
import sqlalchemy as sa
from webhook_bench import (
    ADMIN_TOKEN,
    APP_SECRET,
    MARIADB_SERVER,
    PATH,
    PNID,
    WABA,
    api,
    free_port,
    sync_url,
    wait_http,
)

from control_plane.config import normalize_database_url
from control_plane.migrations import runner

HEALTH_INTERVAL_S = 0.01
TARGET_MS = 50.0
NUMBERS_PER_KIND = {"ids40k": 40_000, "ids1k": 1_000}
UNKNOWN_LINE = re.compile(r"unknown (phone_number_id|waba)")


# ------------------------------------------------------------------------------------------ bodies


def legit_body(wamid: str) -> bytes:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
                            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                            "messages": [
                                {
                                    "from": "16505551234",
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": "Does it come in another color?"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


_SLOT = b"QQQQQQQQ"  # replaced per request by an 8-digit counter: every id is fresh


def _ids_template(count: int, with_status: bool) -> bytes:
    if with_status:
        change = (
            b'{"field":"messages","value":{"messaging_product":"whatsapp","metadata":'
            b'{"display_phone_number":"15550000000","phone_number_id":"7' + _SLOT + b'%05d"},'
            b'"statuses":[{"id":"wamid.' + _SLOT + b'%05d","status":"delivered","timestamp":"1700000000",'
            b'"recipient_id":"16505551234"}]}}'
        )
        changes = b",".join(change % (i, i) for i in range(count))
    else:
        change = b'{"value":{"metadata":{"phone_number_id":"7' + _SLOT + b'%05d"},"messages":[]}}'
        changes = b",".join(change % i for i in range(count))
    return b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[' + changes + b"]}]}"


def flood_kinds() -> dict[str, Any]:
    """kind -> a function of the request number giving the body."""
    ids40k, ids1k = _ids_template(40_000, False), _ids_template(1_000, True)
    deep = b'{"object":"whatsapp_business_account","entry":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    group = b"[" * 60 + b"]" * 60
    wide = b'{"object":"whatsapp_business_account","entry":[' + b",".join([group] * 22_000) + b"]}"
    return {
        "ids40k": lambda n: ids40k.replace(_SLOT, b"%08d" % n),
        "ids1k": lambda n: ids1k.replace(_SLOT, b"%08d" % n),
        "deep": lambda n: deep,
        "wide": lambda n: wide,
    }


# ----------------------------------------------------------------------------------------- clients


async def _legit(base: str, start: float, duration: float, rate: float, tag: str) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        body = legit_body(f"wamid.ABUSE{tag}{n:08d}" + "A" * 24)
        t0 = time.perf_counter()
        try:
            async with session.post(
                base + PATH,
                data=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)},
            ) as resp:
                await resp.read()
                key = str(resp.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            key = type(exc).__name__
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[key] = statuses.get(key, 0) + 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as session:
        await _sleep_until(start)
        tasks = []
        n = 0
        while (due := start + n / rate) < start + duration:
            await _sleep_until(due)
            tasks.append(asyncio.ensure_future(one(session, n)))
            n += 1
        await asyncio.gather(*tasks)
    return {"latencies_ms": latencies, "statuses": statuses}


async def _health(base: str, start: float, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await _sleep_until(start)
        while time.time() < start + duration:
            t0 = time.perf_counter()
            try:
                async with session.get(base + "/healthz") as resp:
                    await resp.read()
                    failures += resp.status != 200
            except (TimeoutError, aiohttp.ClientError):
                failures += 1
            latencies.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(HEALTH_INTERVAL_S)
    return {"latencies_ms": latencies, "failures": failures}


async def _flood(base: str, start: float, duration: float, only: list[str]) -> dict[str, Any]:
    kinds = {name: body for name, body in flood_kinds().items() if name in only}
    names = list(kinds)
    stats = {name: {"requests": 0, "bytes": 0, "statuses": {}, "ms": []} for name in names}
    connector = aiohttp.TCPConnector(limit=1)  # ONE client, one connection, back to back
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300), connector=connector) as s:
        await _sleep_until(start)
        n = 0
        while time.time() < start + duration:
            name = names[n % len(names)]
            body = kinds[name](n)
            fake = "sha256=" + secrets.token_hex(32)
            t0 = time.perf_counter()
            try:
                async with s.post(
                    base + PATH,
                    data=body,
                    headers={"Content-Type": "application/json", "X-Hub-Signature-256": fake},
                ) as resp:
                    await resp.read()
                    key = str(resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                key = type(exc).__name__
            entry = stats[name]
            entry["requests"] += 1
            entry["bytes"] = len(body)
            entry["statuses"][key] = entry["statuses"].get(key, 0) + 1
            entry["ms"].append((time.perf_counter() - t0) * 1000)
            n += 1
    return {"kinds": stats, "elapsed_s": max(time.time() - start, 1e-9)}


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def run_role(role: str, base: str, start: float, args: dict[str, Any]) -> dict[str, Any]:
    """One client process's work (a ProcessPoolExecutor task)."""
    if role == "legit":
        coro = _legit(base, start, args["duration"], args["legit_rate"], args["tag"])
    elif role == "health":
        coro = _health(base, start, args["duration"])
    else:
        os.nice(args["flood_nice"])
        coro = _flood(base, start, args["duration"], args["kinds"])
    return asyncio.run(coro)


def run_phase(base: str, roles: list[str], args: dict[str, Any]) -> dict[str, Any]:
    """Each role in a process of its own, started afresh (the flood's lowers its priority)."""
    start = time.time() + 3.0
    with ProcessPoolExecutor(max_workers=len(roles), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {role: pool.submit(run_role, role, base, start, args) for role in roles}
        return {role: fut.result() for role, fut in futures.items()}


# ------------------------------------------------------------------------------------------ report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def phase_figures(res: dict[str, Any]) -> dict[str, float]:
    legit, health = res["legit"]["latencies_ms"], res["health"]["latencies_ms"]
    return {
        "legit_p50_ms": pct(legit, 50),
        "legit_p99_ms": pct(legit, 99),
        "legit_max_ms": max(legit, default=float("nan")),
        "legit_sent": len(legit),
        "legit_ok": res["legit"]["statuses"].get("200", 0),
        "health_p99_ms": pct(health, 99),
        "health_max_ms": max(health, default=float("nan")),
        "health_polls": len(health),
    }


def print_phase(name: str, fig: dict[str, float], res: dict[str, Any]) -> None:
    print(
        f"  {name:9s} legit: p50 {fig['legit_p50_ms']:7.1f} ms  p99 {fig['legit_p99_ms']:7.1f} ms  "
        f"max {fig['legit_max_ms']:7.1f} ms  statuses {res['legit']['statuses']}   "
        f"/healthz: p99 {fig['health_p99_ms']:6.1f} ms  max {fig['health_max_ms']:7.1f} ms "
        f"({fig['health_polls']} polls, {res['health']['failures']} failed)",
        flush=True,
    )


def print_flood(flood: dict[str, Any]) -> tuple[float, int]:
    total = sum(k["requests"] for k in flood["kinds"].values())
    rps = total / flood["elapsed_s"]
    print(f"  flood: {total} requests in {flood['elapsed_s']:.1f} s = {rps:.1f} req/s, one connection")
    for name, k in flood["kinds"].items():
        worst = max(k["ms"], default=float("nan"))
        print(
            f"    {name:7s} {k['bytes'] / 1e6:5.2f} MB  {k['requests']:5d} requests  "
            f"statuses {k['statuses']}  answer p50 {pct(k['ms'], 50):8.1f} ms  max {worst:8.1f} ms"
        )
    return rps, total


def count_stored(engine: sa.Engine, tag: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT COUNT(*) FROM messages WHERE provider_message_id LIKE :p"),
            {"p": f"wamid.ABUSE{tag}%"},
        ).scalar_one()


def unknown_lines(log_path: Path, offset: int) -> tuple[int, int]:
    """(lines about unknown numbers since ``offset``, the log's size now)."""
    data = log_path.read_bytes()
    text = data[offset:].decode("utf-8", "replace")
    return sum(1 for line in text.splitlines() if UNKNOWN_LINE.search(line)), len(data)


# -------------------------------------------------------------------------------------------- main


def start_app(tmp: Path, db_name: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"{MARIADB_SERVER}/{db_name}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": "bench-secret-key-" + "y" * 16,
        "DATA_DIR": str(tmp / "data"),
        "SESSIONS_DIR": str(tmp / "sessions"),
        "LOG_LEVEL": "WARNING",
        "SUPERVISOR_ENABLED": "false",
        "MESSAGING_ENABLED": "false",
        "GRAPH_API_URL": f"http://127.0.0.1:{free_port()}",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    tenant = api(base, "POST", "/api/tenants", {"name": "abuse-bench"}, ADMIN_TOKEN)
    config = {
        "api_type": "business_api",
        "fallback_policy": "business_api_only",
        "phone_number_id": PNID,
        "waba_id": WABA,
        "access_token": "EAAG-bench-token",
        "app_secret": APP_SECRET,
        "verify_token": "bench-verify-token",
    }
    api(base, "POST", "/api/whatsapp/config", config, tenant["api_key"])
    return proc, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds per phase (default 30)")
    parser.add_argument("--legit-rate", type=float, default=20, help="legitimate deliveries per second")
    parser.add_argument(
        "--kinds", default="ids40k,ids1k,deep,wide", help="flood kinds, comma-separated (default: all four)"
    )
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=0,
        help="the flooding client's nice value (default 0: it shares the cores equally with the server)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    parser.add_argument("--app-log", type=Path, help="keep the app's log (stderr) in this file")
    args = parser.parse_args()

    db_name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db_name} CHARACTER SET utf8mb4"))
    db_url = normalize_database_url("x", f"{MARIADB_SERVER}/{db_name}")
    tmp = Path(tempfile.mkdtemp(prefix="abuse-bench-"))
    engine = sa.create_engine(sync_url(db_url))
    proc = None
    try:
        runner.upgrade(db_url)
        log_path = tmp / "app.log"
        proc, base = start_app(tmp, db_name, log_path)
        kinds = [k for k in args.kinds.split(",") if k]
        common = {"duration": args.duration, "legit_rate": args.legit_rate, "kinds": kinds}
        common["flood_nice"] = args.flood_nice
        print(
            f"{args.duration:.0f} s per phase, legitimate {args.legit_rate:.0f}/s, MariaDB {db_name}",
            flush=True,
        )
        run_phase(base, ["legit", "health"], {**common, "duration": 2, "tag": "W"})  # warm-up
        base_res = run_phase(base, ["legit", "health"], {**common, "tag": "B"})
        _, offset = unknown_lines(log_path, 0)
        flood_res = run_phase(base, ["legit", "health", "flood"], {**common, "tag": "F"})
        time.sleep(0.5)  # the last answers' log lines
        lines, _ = unknown_lines(log_path, offset)

        base_fig, flood_fig = phase_figures(base_res), phase_figures(flood_res)
        print_phase("baseline", base_fig, base_res)
        print_phase("flooded", flood_fig, flood_res)
        rps, total = print_flood(flood_res["flood"])
        sent = flood_res["flood"]["kinds"]
        numbers = sum(sent[name]["requests"] * n for name, n in NUMBERS_PER_KIND.items() if name in sent)
        print(
            f"  log lines about unknown numbers while flooded: {lines} "
            f"({total} flood deliveries, {numbers:,} numbers)"
        )
        lost = 0
        for tag, res in (("B", base_res), ("F", flood_res)):
            ok, stored = res["legit"]["statuses"].get("200", 0), count_stored(engine, tag)
            lost += max(0, ok - stored)
        print()
        checks = [
            (
                f"flooded legit p99 < {TARGET_MS:.0f} ms ({flood_fig['legit_p99_ms']:.1f})",
                flood_fig["legit_p99_ms"] < TARGET_MS,
            ),
            (
                f"flooded /healthz max < {TARGET_MS:.0f} ms ({flood_fig['health_max_ms']:.1f})",
                flood_fig["health_max_ms"] < TARGET_MS,
            ),
            (
                f"every legit delivery 200 ({flood_fig['legit_ok']}/{flood_fig['legit_sent']})",
                flood_fig["legit_ok"] == flood_fig["legit_sent"],
            ),
            (f"every 200 stored (missing {lost})", lost == 0),
            (f"unknown-number log lines <= flood deliveries ({lines} <= {total})", lines <= total),
        ]
        for label, good in checks:
            print(f"  {'PASS' if good else 'FAIL'}  {label}")
        if args.json:
            figures = {f"baseline_{k}": v for k, v in base_fig.items()}
            figures |= {f"flooded_{k}": v for k, v in flood_fig.items()}
            figures |= {"flood_req_s": rps, "unknown_log_lines": lines, "lost": lost}
            for name, k in flood_res["flood"]["kinds"].items():
                for status, count in k["statuses"].items():
                    figures[f"flood_{name}_{status}"] = count
            print(json.dumps(figures), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db_name}"))
        admin.dispose()
        if args.app_log and (tmp / "app.log").exists():
            shutil.copy(tmp / "app.log", args.app_log)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
