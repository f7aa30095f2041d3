"""Command line: ``python -m control_plane serve|migrate|create-tenant``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from control_plane.app import create_app
from control_plane.config import ConfigError, Settings, load_settings
from control_plane.db import Database
from control_plane.db import tenants as tenants_db
from control_plane.logs import setup_logging
from control_plane.migrations import runner
from control_plane.supervisor import paths
from control_plane.supervisor.process import find_orphans, kill_process_groups

log = logging.getLogger("control_plane")


# Objects the collector's youngest generation gathers before it runs (Python's default: 700).
# At thousands of events a second, an event's objects (its task, future, envelope, packets) live a
# few milliseconds: with 700 they survive two young collections while still in flight, reach the
# oldest generation, and make full collections frequent, each a 10-45 ms stop of the event loop
# (the relay bench's "longest GC pause"). With 20,000 they are mostly gone before the first one;
# the pauses fell to under a millisecond at 10,000-16,000 events/s.
GC_YOUNG_THRESHOLD = 20_000


async def _tune_garbage_collector(app: web.Application) -> None:
    """Once every resource has started: move what exists now (modules, table metadata, pools: ~150k
    objects) out of the garbage collector's reach. A full collection then scans only what came later;
    on the relay bench it was otherwise a 150-300 ms stop of the event loop, the largest cause of p99
    publish->receipt latency. And let the young generation grow (``GC_YOUNG_THRESHOLD``). Process-wide
    settings, so they live here and not in a library module."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# Every file the service writes (the SQLite database and its -wal/-shm/-journal, secrets, the send
# journal, the bridges' and browsers' session folders) is for its own user only: files 0600, folders
# 0700. Set before anything is created; children (bridges, Chromium) inherit it.
PRIVATE_UMASK = 0o077


def _make_private(settings: Settings) -> None:
    """What an older version left readable by others: DATA_DIR (every folder and file in it, the
    SQLite database wherever it is) and the SESSIONS_DIR root and tenant folders, down to 0700/0600."""
    paths_to_fix: list[Path] = []
    for root in (settings.data_dir, settings.sessions_dir):
        if root.is_dir():
            paths_to_fix.append(root)
    if settings.data_dir.is_dir():
        paths_to_fix += settings.data_dir.rglob("*")
    if settings.sessions_dir.is_dir():
        paths_to_fix += [p for p in settings.sessions_dir.iterdir() if p.is_dir()]
    if settings.is_sqlite:
        db_file = Path(settings.database_url.split(":///", 1)[1].split("?", 1)[0])
        paths_to_fix += [Path(f"{db_file}{end}") for end in ("", "-wal", "-shm", "-journal")]
    fixed = []
    for path in paths_to_fix:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
            continue
        os.chmod(path, 0o700 if stat.S_ISDIR(st.st_mode) else 0o600)
        fixed.append(str(path))
    if fixed:
        log.warning("made %d file(s)/folder(s) private (0600/0700): %s", len(fixed), ", ".join(fixed[:10]))


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    _make_private(settings)
    if args.migrate:
        runner.upgrade(settings.database_url)
    token = settings.extra.get("generated_admin_token")
    if token:
        # Printed once, on the run that created it; it is kept in DATA_DIR/admin_token (0600).
        print(f"Generated ADMIN_TOKEN (kept in {settings.data_dir / 'admin_token'}): {token}", flush=True)
    app = create_app(settings)
    app.on_startup.append(_tune_garbage_collector)
    asyncio.run(_serve_until_signalled(app, settings, args.host or settings.host, args.port or settings.port))
    return 0


# Shutdown (SIGTERM or SIGINT): logged at once; the listener closes; Socket.IO clients are let go
# (realtime.release_clients: they reconnect elsewhere and replay with `since`); requests in flight
# get HANDLER_WAIT_S to finish; then every resource closes in reverse order (the dispatcher finishes
# its sends, the supervisor stops the bridges within STOP_WAIT_S). Past STOP_WAIT_S +
# SHUTDOWN_GRACE_S, or at a second signal, the bridges are killed and the process exits at once.
HANDLER_WAIT_S = 2.0
SHUTDOWN_GRACE_S = 2.5
EXIT_FORCED = 1


async def _serve_until_signalled(app: web.Application, settings: Settings, host: str, port: int) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=HANDLER_WAIT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("serving on http://%s:%s", host, port)
        signalled = await _wait_for_signal(settings)
    finally:
        started = time.monotonic()
        await runner.cleanup()
    log.info("shutdown complete in %.2fs (after %s)", time.monotonic() - started, signalled)


async def _wait_for_signal(settings: Settings) -> str:
    """Waits for SIGTERM/SIGINT; from then on a second one, or the shutdown overrunning its
    deadline, ends the process at once (``_exit_now``). Returns the signal's name."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()
    handled = (signal.SIGTERM, signal.SIGINT)

    def first(sig: signal.Signals) -> None:
        for s in handled:  # plain handlers from now on: they act even if the loop is stuck
            loop.remove_signal_handler(s)
            signal.signal(
                s, lambda num, _frame: _exit_now(settings, f"second signal ({signal.Signals(num).name})")
            )
        deadline_s = settings.stop_wait_s + SHUTDOWN_GRACE_S
        log.warning(
            "%s received: shutting down (no new connections, Socket.IO clients released, requests in "
            "flight finish, bridges stop) within %.1fs; send it again to exit at once",
            sig.name,
            deadline_s,
        )
        overrun = threading.Timer(
            deadline_s, _exit_now, (settings, f"shutdown still running after {deadline_s:.1f}s")
        )
        overrun.daemon = True
        overrun.start()
        if not received.done():
            received.set_result(sig.name)

    for sig in handled:
        loop.add_signal_handler(sig, first, sig)
    return await received


def _exit_now(settings: Settings, why: str) -> None:
    """Kills every bridge and browser of this SESSIONS_DIR, then ends the process (no cleanup)."""
    try:
        log.error("%s: killing the bridges and exiting now", why)
        root = paths.sessions_root(settings.sessions_dir)
        killed = kill_process_groups(find_orphans(root), wait_s=0.3)
        log.error("exiting now (%d bridge/browser process(es) killed)", killed)
        logging.shutdown()
    finally:
        os._exit(EXIT_FORCED)


def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    if args.direction == "up":
        runner.upgrade(settings.database_url, args.revision or "head")
    else:
        runner.downgrade(settings.database_url, args.revision or "-1")
    print(f"migrated {args.direction} to {args.revision or ('head' if args.direction == 'up' else '-1')}")
    return 0


def _create_tenant(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run() -> dict[str, object]:
        db = Database(settings.database_url)
        try:
            async with db.begin() as conn:
                tenant = await tenants_db.create_tenant(conn, args.name, sandbox=args.sandbox)
                key, _ = await tenants_db.create_api_key(conn, tenant["id"], label="cli")
            return {"id": tenant["id"], "name": tenant["name"], "sandbox": tenant["sandbox"], "api_key": key}
        finally:
            await db.close()

    print(json.dumps(asyncio.run(run())))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m control_plane")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/Socket.IO server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.set_defaults(func=_serve)
    mig = sub.add_parser("migrate", help="apply (up) or roll back (down) schema migrations")
    mig.add_argument("direction", choices=["up", "down"])
    mig.add_argument(
        "revision", nargs="?", help="target (default: head for up, one step for down; 'base' = empty)"
    )
    mig.set_defaults(func=_migrate)
    ct = sub.add_parser("create-tenant", help="create a tenant and print its first API key (JSON)")
    ct.add_argument("name")
    ct.add_argument("--sandbox", action="store_true")
    ct.set_defaults(func=_create_tenant)
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
