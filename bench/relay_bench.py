"""Relay benchmark: 100 tenants, one websocket client each (Node socket.io-client, in separate
processes), events published inside the server at rising rates. For each rate: delivered share,
p50/p99 publish->receipt latency, order errors. Run twice in one go: persistence off (the ceiling:
seqs numbered in memory, emit only) and on (group commit to MariaDB, then emit).

    .venv/bin/python bench/relay_bench.py            # throwaway MariaDB database on 127.0.0.1
    .venv/bin/python bench/relay_bench.py --rates 1000,2000,4000 --duration 3

"Sustained" = the highest rate with >= 98% delivered, p99 < 50 ms and nothing out of order.
CPU per event is split between this process (the server; the load generator publishes inside it),
the client processes, MariaDB, and everything else on the machine ("other"): other work on the two
cores, or a busy MariaDB, skews every figure, so check those columns before trusting a run. "Waiting
for a CPU" is the time per event the server's and MariaDB's threads were runnable but queued behind
other processes (schedstat): with persistence on, MariaDB's share of it lies on the event's path.
Needs MariaDB (TEST_MARIADB_SERVER, default mysql://root@127.0.0.1:3306) and node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the imports below (E402) come from this checkout

import sqlalchemy as sa
from aiohttp import web

from control_plane.__main__ import _tune_garbage_collector
from control_plane.app import create_app
from control_plane.config import load_settings, normalize_database_url
from control_plane.db import events as events_db
from control_plane.db import tenants as tenants_db
from control_plane.events import MESSAGE_RECEIVED
from control_plane.migrations import runner
from control_plane.realtime.publisher import EventPublisher

CLIENT_JS = ROOT / "bench" / "relay_client.js"
NODE_PKG = ROOT / "tests" / "realtime" / "node_client"
MARIADB_SERVER = os.environ.get("TEST_MARIADB_SERVER", "mysql://root@127.0.0.1:3306")
TEXT = "Hello, I would like to know the status of my order #12345, thanks!"


def sync_url(url: str) -> str:
    return url.replace("mysql+aiomysql://", "mysql+pymysql://")


def make_database() -> tuple[str, str]:
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    engine.dispose()
    url = f"{MARIADB_SERVER}/{name}"
    runner.upgrade(normalize_database_url("x", url))
    return name, url


def drop_database(name: str) -> None:
    engine = sa.create_engine(sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    engine.dispose()


def _pipes(child: asyncio.subprocess.Process) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    assert child.stdin is not None and child.stdout is not None  # both made with PIPE
    return child.stdin, child.stdout


class Clients:
    """Client processes, each holding a share of the tenants' connections."""

    def __init__(self, url: str, tokens: list[str], procs: int) -> None:
        self.url, self.tokens, self.procs = url, tokens, procs
        self.children: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for i in range(self.procs):
            share = self.tokens[i :: self.procs]
            child = await asyncio.create_subprocess_exec(
                "node",
                str(CLIENT_JS),
                self.url,
                json.dumps(share),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=256 * 1024 * 1024,
            )  # a full report lists every latency of the phase
            self.children.append(child)
        for child in self.children:
            line = json.loads(await asyncio.wait_for(_pipes(child)[1].readline(), 30))
            while "ready" not in line:
                print("client:", line, file=sys.stderr)
                line = json.loads(await asyncio.wait_for(_pipes(child)[1].readline(), 30))
            assert line["failed"] == 0, line

    async def report(self, phase: int, full: bool = False) -> dict:
        for child in self.children:
            stdin = _pipes(child)[0]
            stdin.write(json.dumps({"phase": phase, "full": full}).encode() + b"\n")
            await stdin.drain()
        total = {"count": 0, "lat": [], "out_of_order": 0}
        for child in self.children:
            rep = json.loads(await asyncio.wait_for(_pipes(child)[1].readline(), 30))
            total["count"] += rep["count"]
            total["lat"] += rep["lat"]
            total["out_of_order"] += rep["out_of_order"]
        return total

    async def stop(self) -> None:
        for child in self.children:
            _pipes(child)[0].close()
        for child in self.children:
            try:
                await asyncio.wait_for(child.wait(), 5)
            except TimeoutError:
                child.kill()
                await child.wait()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every process, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK  # less idle and iowait


def runqueue_waits(pid: int) -> dict[str, float]:
    """Per thread of a process: seconds spent runnable but waiting for a CPU (schedstat)."""
    waits = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            waits[f"{pid}/{stat.parent.name}"] = int(stat.read_text().split()[1]) / 1e9
    return waits


def waited_s(before: dict[str, float], after: dict[str, float]) -> float:
    """Waiting between two readings, over the threads alive at the second (threads come and go:
    one that ended in between loses its last stretch, one that started counts from its start)."""
    return sum(value - before.get(tid, 0.0) for tid, value in after.items())


def mariadb_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("mariadbd", "mysqld"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class CpuMeter:
    """Where the CPU went during one rate: this (server) process, the client processes, MariaDB,
    and everything else on the machine (other work sharing the 2 cores skews every figure)."""

    def __init__(self, clients: list[int]) -> None:
        self.groups = {"clients": clients, "mariadb": mariadb_pids()}

    def read(self) -> dict[str, Any]:
        now: dict[str, Any] = {
            name: sum(proc_cpu_s(pid) for pid in pids) for name, pids in self.groups.items()
        }
        now["server"] = time.process_time()
        # Waiting for a CPU: on 2 cores the server, MariaDB and the clients queue for each other.
        now["server_wait"] = runqueue_waits(os.getpid())
        now["mariadb_wait"] = {k: v for pid in self.groups["mariadb"] for k, v in runqueue_waits(pid).items()}
        now["machine"] = machine_busy_s()
        now["wall"] = time.monotonic()
        return now

    @staticmethod
    def per_event_us(before: dict[str, Any], after: dict[str, Any], events: int) -> dict[str, float]:
        used = {
            k: (waited_s(before[k], after[k]) if isinstance(before[k], dict) else after[k] - before[k])
            for k in before
        }
        used["other"] = max(0.0, used["machine"] - used["server"] - used["clients"] - used["mariadb"])
        out = {
            k: used[k] * 1e6 / max(events, 1)
            for k in ("server", "clients", "mariadb", "other", "server_wait", "mariadb_wait")
        }
        out["busy"] = used["machine"] / max(used["wall"], 1e-9) / (os.cpu_count() or 1)
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class GcPauses:
    """The longest garbage-collector pause (a stop of the event loop) since the last reset."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest_ms = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self.started) * 1000)

    def take(self) -> float:
        value, self.longest_ms = self.longest_ms, 0.0
        return value


GC = GcPauses()


async def run_phase(
    publisher: EventPublisher, tenant_ids: list[str], phase: int, rate: int, duration_s: float
) -> tuple[int, float, float, list[float]]:
    """Publish ``rate`` events/s for ``duration_s``; returns (sent, achieved rate, max lateness ms,
    publish->durable latencies in ms: when each ``publish()`` returned)."""
    total = int(rate * duration_s)
    tasks: set[asyncio.Task] = set()
    failures = 0
    durable: list[float] = []

    def done(task: asyncio.Task) -> None:
        nonlocal failures
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures += 1
        elif not task.cancelled():
            durable.append(time.time() * 1000 - task.result()["data"]["t"])

    start = time.monotonic()
    sent, late_ms = 0, 0.0
    n_tenants = len(tenant_ids)
    id_prefix = uuid.uuid4().hex[:20]
    while sent < total:
        elapsed = time.monotonic() - start
        due = min(total, int(elapsed * rate) + 1)
        late_ms = max(late_ms, (elapsed - sent / rate) * 1000)
        while sent < due:
            # A unique 32-hex id like a uuid4's, without the generator's getrandom() call per event
            # (a cost of this load generator, not of the server it shares the event loop with).
            data = {
                "p": phase,
                "t": time.time() * 1000,
                "message_id": f"{id_prefix}{sent:012x}",
                "conversation_id": sent % 997,
                "provider": "web",
                "direction": "inbound",
                "from": "15551234567",
                "type": "text",
                "content": {"text": TEXT},
                "status": "received",
            }
            tenant_id = tenant_ids[sent % n_tenants]
            task = asyncio.create_task(publisher.publish(tenant_id, MESSAGE_RECEIVED, data))
            tasks.add(task)
            task.add_done_callback(done)
            sent += 1
        await asyncio.sleep(0.001)
    achieved = sent / (time.monotonic() - start)
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    if failures:
        print(f"  {failures} publish calls failed", file=sys.stderr)
    return sent, achieved, late_ms, durable


def undelivered_report(publisher: EventPublisher) -> str:
    """What the relay and the publisher hold when a phase was not fully delivered (for diagnosis)."""
    relay = publisher.sink
    subs = list(getattr(relay, "subs", {}).values())
    return (
        f"undelivered: {len(subs)} subscribers, {sum(s.catching_up for s in subs)} catching up "
        f"({sum(len(s.buffer) for s in subs)} buffered, "
        f"{sum(len(s.dirty) for s in subs)} tenants to replay), "
        f"{sum(s.closed for s in subs)} closed, {sum(s.socket is None for s in subs)} without a socket; "
        f"publisher: {len(publisher._pending)} pending, sending {len(publisher._sending)}, "
        f"predicted in flight {len(publisher._predicted_open)}, open batches {len(publisher._open)}; "
        f"relay {getattr(relay, 'stats', None)}"
    )


def phase_row(
    label: str, rate: int, sent: int, achieved: float, late_ms: float, durable: list, rep: dict, cpu: dict
) -> dict:
    """One rate's figures, and whether it passed ("ok")."""
    lat = rep["lat"]
    row = {
        "mode": label,
        "rate": rate,
        "achieved": achieved,
        "sent": sent,
        "got": rep["count"],
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "late_ms": late_ms,
        "durable_p50": percentile(durable, 0.50),
        "durable_p99": percentile(durable, 0.99),
        "disorder": rep["out_of_order"],
        "cpu_us": cpu["server"],
        "gc_ms": GC.take(),
        "cpu": cpu,
    }
    row["ok"] = (
        row["got"] >= 0.98 * sent and row["p99"] < 50 and row["disorder"] == 0 and achieved >= 0.95 * rate
    )
    return row


def print_row(row: dict) -> None:
    cpu, sent = row["cpu"], row["sent"]
    print(
        f"  {row['mode']:<24} {row['rate']:>6}/s  sent {sent:>6} ({row['achieved']:>7.0f}/s)  delivered "
        f"{row['got'] / sent:6.1%}  p50 {row['p50']:6.1f} ms  p99 {row['p99']:6.1f} ms  "
        f"(durable p50 {row['durable_p50']:5.1f} p99 {row['durable_p99']:5.1f})  "
        f"CPU us/event: server {row['cpu_us']:4.0f} clients {cpu['clients']:3.0f} "
        f"mariadb {cpu['mariadb']:3.0f} other {cpu['other']:3.0f} (machine {cpu['busy']:4.0%} busy; "
        f"waiting for a CPU: server {cpu['server_wait']:3.0f} mariadb {cpu['mariadb_wait']:3.0f})  "
        f"publisher late {row['late_ms']:5.0f} ms  "
        f"longest GC pause {row['gc_ms']:4.0f} ms  "
        f"order errors {row['disorder']}  "
        f"{'ok' if row['ok'] else 'FAIL'}",
        flush=True,
    )


async def sweep(
    label: str,
    publisher: EventPublisher,
    url: str,
    tenants: list[dict],
    rates: list[int],
    duration_s: float,
    procs: int,
    phase0: int,
) -> list[dict]:
    clients = Clients(url, [t["key"] for t in tenants], procs)
    await clients.start()
    meter = CpuMeter([child.pid for child in clients.children])
    rows: list[dict] = []
    fails = 0
    try:
        for i, rate in enumerate(rates):
            phase = phase0 + i
            cpu0 = meter.read()
            GC.take()
            sent, achieved, late_ms, durable = await run_phase(
                publisher, [t["id"] for t in tenants], phase, rate, duration_s
            )
            deadline = time.monotonic() + 3.0
            rep = await clients.report(phase)
            while rep["count"] < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                rep = await clients.report(phase)
            cpu = CpuMeter.per_event_us(cpu0, meter.read(), sent)
            rep = await clients.report(phase, full=True)
            row = phase_row(label, rate, sent, achieved, late_ms, durable, rep, cpu)
            rows.append(row)
            print_row(row)
            if row["got"] < sent:
                print("  " + undelivered_report(publisher), file=sys.stderr, flush=True)
            fails = 0 if row["ok"] else fails + 1
            if fails >= 2:
                break
    finally:
        await clients.stop()
    return rows


async def make_tenants(app: web.Application, n: int) -> list[dict]:
    tenants = []
    async with app["db"].begin() as conn:
        for i in range(n):
            t = await tenants_db.create_tenant(conn, f"bench-{i}")
            key, _ = await tenants_db.create_api_key(conn, t["id"])
            tenants.append({"id": t["id"], "key": key})
    return tenants


async def run_rounds(
    args: argparse.Namespace, app: web.Application, base: str, tenants: list[dict], rates: list[int]
) -> dict[str, list[list[dict]]]:
    """Each round: the ceiling sweep (numbered in memory), then the persisted one."""
    results: dict[str, list[list[dict]]] = {"ceiling": [], "persisted": []}
    for round_no in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_no + 1}/{args.rounds}", flush=True)
        memory = EventPublisher(None, app["realtime_relay"], persist=False)
        async with app["db"].connect() as conn:  # continue each tenant's seqs where the log is
            memory._memory_seq = {t["id"]: await events_db.last_seq(conn, t["id"]) for t in tenants}
        memory.start()
        results["ceiling"].append(
            await sweep(
                "persistence off (ceiling)",
                memory,
                base,
                tenants,
                rates,
                args.duration,
                args.procs,
                10_000 * round_no,
            )
        )
        await memory.close()
        results["persisted"].append(
            await sweep(
                "persisted (MariaDB)",
                app["events"],
                base,
                tenants,
                rates,
                args.duration,
                args.procs,
                10_000 * round_no + 5_000,
            )
        )
    return results


def print_summary(
    args: argparse.Namespace, app: web.Application, results: dict[str, list[list[dict]]], rates: list[int]
) -> None:
    stats = app["events"].stats
    print(
        f"  group commit: {stats['events']} events in {stats['batches']} transactions "
        f"({stats['events'] / max(stats['batches'], 1):.1f} per commit, "
        f"{stats.get('commit_s', 0) * 1000 / max(stats['batches'], 1):.1f} ms from send to commit; "
        f"{stats.get('predicted', 0)} numbered in advance, {stats.get('mispredicted', 0)} numbered again)"
    )
    print(
        f"\nsummary (median of {args.rounds} round(s); load average now "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )
    best: dict[str, float] = {}
    for label in ("ceiling", "persisted"):
        per_round = [max([r["rate"] for r in rows if r["ok"]], default=0) for rows in results[label]]
        best[label] = statistics.median_low(per_round)  # a rate that was actually run
        ok_rows = [r for rows in results[label] for r in rows if r["ok"] and r["rate"] == best[label]]
        figures = (
            f"p50 {statistics.median(r['p50'] for r in ok_rows):.1f} ms, "
            f"p99 {statistics.median(r['p99'] for r in ok_rows):.1f} ms, server CPU "
            f"{statistics.median(r['cpu_us'] for r in ok_rows):.0f} us/event"
            if ok_rows
            else "-"
        )
        capped = "  (passed the highest rate run: a floor, not a ceiling)" if best[label] >= rates[-1] else ""
        print(
            f"  sustained {label:<10} {best[label]:>6.0f} events/s  ({figures})  rounds: {per_round}{capped}"
        )
    if best["ceiling"]:
        cost = 1 - best["persisted"] / best["ceiling"]
        met = "met" if best["persisted"] >= 2000 else "NOT met"
        print(
            f"  persistence costs {cost:.0%} of the ceiling (target < 40%); "
            f">= 2000 events/s at p99 < 50 ms persisted: {met}"
        )
    print(f"  relay: {app['realtime_relay'].stats}")
    if args.json:
        print(json.dumps(headline(results, best)), flush=True)


async def main(args: argparse.Namespace, url: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    env = {
        "DATABASE_URL": url,
        "ADMIN_TOKEN": "bench-admin-token-xxxxxxxx",
        "SECRET_KEY": "bench-secret-key-yyyyyyyy",
        "DATA_DIR": "/tmp/relay-bench",
        "SUPERVISOR_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    settings = load_settings(env, generate_secrets=False)
    app = create_app(settings)
    runner_ = web.AppRunner(app, access_log=None)
    await runner_.setup()
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await _tune_garbage_collector(app)  # as the serve command does once the app has started
    try:
        tenants = await make_tenants(app, args.tenants)
        rates = [int(r) for r in args.rates.split(",")]
        print(
            f"relay bench: {args.tenants} tenants, one websocket client each in {args.procs} node "
            f"processes; {args.duration}s per rate; redis={'on' if args.redis_url else 'off'}; "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
            flush=True,
        )
        results = await run_rounds(args, app, f"http://127.0.0.1:{port}", tenants, rates)
        print_summary(args, app, results, rates)
    finally:
        await runner_.cleanup()


def headline(results: dict[str, list[list[dict]]], best: dict[str, float]) -> dict[str, float]:
    """The summary's figures for ``--json`` (medians over rounds at each mode's sustained rate)."""
    figures: dict[str, float] = {}
    for label in ("ceiling", "persisted"):
        figures[f"{label}_events_s"] = best[label]
        ok_rows = [r for rows in results[label] for r in rows if r["ok"] and r["rate"] == best[label]]
        for key, name in (("p50", "p50_ms"), ("p99", "p99_ms"), ("cpu_us", "server_cpu_us_per_event")):
            if ok_rows:
                figures[f"{label}_{name}"] = statistics.median(r[key] for r in ok_rows)
    at_2000 = [r["p99"] for rows in results["persisted"] for r in rows if r["rate"] == 2000]
    if at_2000:
        figures["persisted_p99_ms_at_2000"] = statistics.median(at_2000)
    if best["ceiling"]:
        figures["persistence_cost"] = 1 - best["persisted"] / best["ceiling"]
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per rate")
    parser.add_argument(
        "--rates",
        default="1000,2000,4000,6000,8000,10000,12000,14000,16000,18000,20000,22000,24000,28000,32000",
        help="rising rates; the sweep of a mode ends after two failing rates in a row "
        "(a mode passing the last one is capped: its figure is a floor)",
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--redis-url", default=None, help="also go through the Redis link between nodes")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; figures are medians")
    parser.add_argument(
        "--json", action="store_true", help="also print the headline figures as one JSON line, last"
    )
    if not (NODE_PKG / "node_modules" / "socket.io-client").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_PKG, check=True)
    cli = parser.parse_args()
    db_name, database_url = (None, cli.database_url) if cli.database_url else make_database()
    try:
        asyncio.run(main(cli, database_url))
    finally:
        if db_name:
            drop_database(db_name)
