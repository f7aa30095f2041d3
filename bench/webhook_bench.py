"""Webhook benchmark: signed Meta deliveries against the real app on MariaDB, side by side with a
bare aiohttp handler that reads the body and answers 200 (the ceiling), from wrk on loopback.

    .venv/bin/python bench/webhook_bench.py                      # 3 alternating rounds of 10 s, 50 conns
    .venv/bin/python bench/webhook_bench.py --duration 20 --rounds 3 --connections 50

Each app request is one inbound text (~720 bytes, Meta's ASCII-escaped JSON) with a unique wamid,
signed with the tenant's app secret (HMAC-SHA256 of the exact bytes): the app verifies the signature,
routes by phone_number_id, stores the message (group commit, durable before 200) and appends a
``message.received`` event in the same transaction. wrk (Debian package ``wrk``; installed with apt
when missing) replays pre-signed bodies from a file through a Lua script; both servers run in their
own processes, sharing the machine's cores with wrk, like production on a small box.

Prints req/s, p50/p99 per round and the medians, the ratio to the ceiling, errors, the CPU each process
spent per request (from /proc), the rows per commit, and checks that every 200 is a stored row.
Targets: >= 50% of the ceiling, p99 < 50 ms at 50 connections, no errors.
Needs MariaDB (TEST_MARIADB_SERVER, default mysql://root@127.0.0.1:3306).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa

from control_plane.config import normalize_database_url
from control_plane.migrations import runner

MARIADB_SERVER = os.environ.get("TEST_MARIADB_SERVER", "mysql://root@127.0.0.1:3306")
ADMIN_TOKEN = "bench-admin-token-" + "x" * 16
PNID, WABA, APP_SECRET = "106540352242922", "102290129340398", "bench-app-secret-0123456789"
PATH = "/api/whatsapp/webhook"

BARE_SERVER = r"""
import sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.Response(text='{"ok":true}', content_type="application/json")
app = web.Application(client_max_size=4 * 1024 * 1024)
app.router.add_post("/api/whatsapp/webhook", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

LUA = r"""
local threads, counter = {}, 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  reqs, i, n, wraps = {}, 0, 0, 0
  local lineno = 0
  for line in io.lines(path) do
    if lineno % nthreads == tid - 1 then
      local sig, body = line:match("^([^\t]*)\t(.*)$")
      n = n + 1
      reqs[n] = wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                         ["X-Hub-Signature-256"] = sig}, body)
    end
    lineno = lineno + 1
  end
end
function request()
  i = i + 1
  if i > n then i = 1; wraps = wraps + 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wraps") or 0) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"wraps":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, w))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_url(url: str) -> str:
    return url.replace("mysql+aiomysql://", "mysql+pymysql://")


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk missing: installing Debian's package with apt-get", flush=True)
    apt = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0:
        apt.insert(0, "sudo")
    subprocess.run(apt, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"server at {url} did not come up") from exc
            time.sleep(0.1)


def api(base: str, method: str, path: str, body: dict, token: str) -> dict:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def make_bodies(path: Path, count: int, prefix: str, bsuid: bool = False) -> int:
    """``count`` lines ``<signature>\\t<body>``: unique wamids, Meta-shaped, ASCII-escaped, signed."""
    secret = APP_SECRET.encode()
    ts = str(int(time.time()))
    size = 0
    with path.open("w") as fh:
        for n in range(count):
            wamid = f"wamid.HBgL{prefix}{n:09d}AgASGBQzQTRBQTJCRjNBNEI3QjFGNUFBAA=="
            contact = {"profile": {"name": "Sheena Nelson"}, "wa_id": f"1650555{n % 1000:04d}"}
            message = {
                "from": f"1650555{n % 1000:04d}",
                "id": wamid,
                "timestamp": ts,
                "type": "text",
                "text": {"body": "Does it come in another color? Olá, größer?"},
            }
            if bsuid:  # what Meta sends since April 2026: the user's business-scoped user id too
                contact["user_id"] = message["from_user_id"] = f"US.1349120865530274{n % 1000:04d}"
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
                                    "metadata": {
                                        "display_phone_number": "15550783881",
                                        "phone_number_id": PNID,
                                    },
                                    "contacts": [contact],
                                    "messages": [message],
                                },
                            }
                        ],
                    }
                ],
            }
            body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()
            sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            fh.write(sig + "\t" + body.decode() + "\n")
            size = len(body)
    return size


def run_wrk(wrk: str, url: str, script: Path, bodies: Path, args: argparse.Namespace) -> dict:
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
    return res


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 when unknown)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mariadb_pid() -> int | None:
    """The MariaDB server the bench uses: the only ``mariadbd``, or among several (test suites start
    private ones) the one listening on ``MARIADB_SERVER``'s port (read from /proc; None if unknown)."""
    out = subprocess.run(["pidof", "mariadbd"], capture_output=True, text=True).stdout.split()
    if len(out) == 1:
        return int(out[0])
    port = urllib.parse.urlsplit(MARIADB_SERVER).port or 3306
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in out:
        try:
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return int(pid)
        except OSError:
            continue
    return None


def run_measured(
    wrk: str, url: str, script: Path, bodies: Path, args: argparse.Namespace, pids: dict[str, int | None]
) -> dict:
    """``run_wrk`` plus the CPU each process spent per request (µs), when it can be read."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    res = run_wrk(wrk, url, script, bodies, args)
    for name, pid in pids.items():
        res[f"cpu_{name}_us"] = (cpu_seconds(pid) - before[name]) * 1e6 / max(res["requests"], 1)
    return res


def cpu_note(res: dict) -> str:
    return "  CPU/req " + ", ".join(
        f"{k[4:-3]} {v:.0f} µs" for k, v in res.items() if k.startswith("cpu_") and v
    )


def count_rows(engine: sa.Engine) -> tuple[int, int]:
    """(stored messages, transactions that stored them): a batch's rows share one updated_at
    (their created_at differ: each row its own, in delivery order)."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT updated_at) FROM messages")).one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--max-rps",
        type=int,
        default=15000,
        help="bodies generated per app round = duration x this (unique wamids)",
    )
    parser.add_argument(
        "--bsuid",
        action="store_true",
        help="each message also names its sender's business-scoped user id (from_user_id, "
        "contacts[].user_id), as Meta's webhooks do since April 2026",
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the headline figures as one JSON line, last"
    )
    args = parser.parse_args()
    wrk = ensure_wrk()

    db_name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sync_url(normalize_database_url("x", MARIADB_SERVER + "/mysql")))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db_name} CHARACTER SET utf8mb4"))
    db_url = normalize_database_url("x", f"{MARIADB_SERVER}/{db_name}")
    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    procs: list[subprocess.Popen] = []
    engine = sa.create_engine(sync_url(db_url))
    try:
        runner.upgrade(db_url)
        app_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "DATABASE_URL": f"{MARIADB_SERVER}/{db_name}",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "SECRET_KEY": "bench-secret-key-" + "y" * 16,
            "DATA_DIR": str(tmp / "data"),
            "SESSIONS_DIR": str(tmp / "sessions"),
            "LOG_LEVEL": "WARNING",
            "SUPERVISOR_ENABLED": "false",
            "GRAPH_API_URL": f"http://127.0.0.1:{free_port()}",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("REDIS_URL", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "control_plane", "serve", "--port", str(app_port)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
        )
        procs.append(subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)]))
        app_base, bare_base = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{bare_port}"
        wait_http(app_base + "/healthz")
        wait_http(bare_base + PATH)
        tenant = api(app_base, "POST", "/api/tenants", {"name": "bench"}, ADMIN_TOKEN)
        api(
            app_base,
            "POST",
            "/api/whatsapp/config",
            {
                "api_type": "business_api",
                "fallback_policy": "business_api_only",
                "phone_number_id": PNID,
                "waba_id": WABA,
                "access_token": "EAAG-bench-token",
                "app_secret": APP_SECRET,
                "verify_token": "bench-verify-token",
            },
            tenant["api_key"],
        )

        script = tmp / "webhook.lua"
        script.write_text(LUA)
        bare_bodies = tmp / "bare.txt"
        body_size = make_bodies(bare_bodies, 20_000, "BARE", args.bsuid)
        # warm-up (connections, caches, JIT of the Lua) on both, not counted
        warm = tmp / "warm.txt"
        make_bodies(warm, 5_000, "WARM", args.bsuid)
        for url in (bare_base + PATH, app_base + PATH):
            subprocess.run(
                [wrk, "-t2", "-c10", "-d2s", "-s", str(script), url, "--", str(warm), "2"],
                capture_output=True,
                check=True,
            )

        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
            f"{args.rounds} alternating rounds, body {body_size} bytes, MariaDB {db_name}",
            flush=True,
        )
        results: dict[str, list[dict]] = {"bare": [], "app": []}
        db_pid = mariadb_pid()
        for rnd in range(1, args.rounds + 1):
            r = run_measured(wrk, bare_base + PATH, script, bare_bodies, args, {"server": procs[1].pid})
            results["bare"].append(r)
            print(
                f"  round {rnd} bare aiohttp : {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:6.1f} ms  "
                f"p99 {r['p99_us'] / 1000:6.1f} ms  errors {r['errors']}" + cpu_note(r),
                flush=True,
            )
            bodies = tmp / "app.txt"
            make_bodies(bodies, args.duration * args.max_rps, f"R{rnd}X", args.bsuid)
            before = count_rows(engine)
            r = run_measured(
                wrk, app_base + PATH, script, bodies, args, {"app": procs[0].pid, "mariadb": db_pid}
            )
            time.sleep(0.5)  # let requests cut by wrk's stop finish
            after = count_rows(engine)
            r["stored"], r["commits"] = after[0] - before[0], after[1] - before[1]
            results["app"].append(r)
            ok = r["requests"] - r["status"]
            print(
                f"  round {rnd} gateway      : {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:6.1f} ms  "
                f"p99 {r['p99_us'] / 1000:6.1f} ms  errors {r['errors']}  200s {ok}  "
                f"rows stored {r['stored']} in {r['commits']} commits"
                + ("  (WARNING: bodies wrapped: duplicates sent)" if r["wraps"] else "")
                + cpu_note(r),
                flush=True,
            )

        def med(kind: str, key: str) -> float:
            return statistics.median(x[key] for x in results[kind])

        bare_rps, app_rps = med("bare", "rps"), med("app", "rps")
        ratio = app_rps / bare_rps
        app_p99 = med("app", "p99_us") / 1000
        errors = sum(x["errors"] for x in results["app"])
        lost = sum(max(0, (x["requests"] - x["status"]) - x["stored"]) for x in results["app"])
        print()
        print("| server | req/s | p50 ms | p99 ms | ratio |")
        print("|---|---|---|---|---|")
        print(
            f"| bare aiohttp, read body, 200 (ceiling) | {bare_rps:,.0f} | "
            f"{med('bare', 'p50_us') / 1000:.1f} | {med('bare', 'p99_us') / 1000:.1f} | 1.000 |"
        )
        print(
            f"| gateway webhook (verify, route, group commit to MariaDB, event log) | {app_rps:,.0f} | "
            f"{med('app', 'p50_us') / 1000:.1f} | {app_p99:.1f} | {ratio:.3f} |"
        )
        print()
        checks = [
            (f"ratio >= 0.50 ({ratio:.3f})", ratio >= 0.5),
            (f"p99 < 50 ms ({app_p99:.1f})", app_p99 < 50),
            (f"zero errors ({errors})", errors == 0),
            (f"every 200 stored (missing {lost})", lost == 0),
        ]
        for label, good in checks:
            print(f"  {'PASS' if good else 'FAIL'}  {label}")
        if args.json:
            cpu = {f"{k[:-3]}_us_per_req": med("app", k) for k in results["app"][0] if k.startswith("cpu_")}
            figures = {"req_s": app_rps, "p50_ms": med("app", "p50_us") / 1000, "p99_ms": app_p99}
            figures |= {"ceiling_req_s": bare_rps, "ratio_to_ceiling": ratio, "errors": errors, "lost": lost}
            print(json.dumps(figures | cpu), flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db_name}"))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
