"""Memory of one WhatsApp Web session on this machine: real bridges (whatsapp-web.js + Debian's
Chromium, the production driver and flags), measured as the supervisor measures them.

    .venv/bin/python bench/session_memory.py [--sessions 3] [--settle-s 20] [--sandbox 3]

Starts ``--sessions`` real bridges at once (``node bridge/src/main.js --driver wwebjs``), each with
its own profile, behind an HTTPS proxy that accepts and never answers: Chromium starts, opens
web.whatsapp.com and waits for it (this machine has no internet, and no linked phone could be used
here anyway). After ``--settle-s`` it reads each session's PSS (proportional set size: shared pages
split among the processes that share them, so the figures add up) over the bridge's whole process
tree, Node and every Chromium process: ``policy.tree_memory_bytes``, what ``GET /api/session``
reports as ``memory_bytes`` and what ``MEMORY_LIMIT_MB`` is compared with. Also ``--sandbox`` scripted
bridges (sandbox tenants: Node only). Prints per-session figures and the total; asserts nothing.

What it cannot show: WhatsApp Web itself loaded and linked (its scripts, the chat list, media
caches), which comes on top. Size from the live figure: ``memory_bytes`` of your running sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control_plane.bridge import protocol
from control_plane.bridge.protocol import BridgeConnection, BridgeEvent
from control_plane.supervisor import policy

CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")
MiB = 2**20


async def blackhole() -> tuple[asyncio.Server, str]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


class Bridge:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.browser_pid: int | None = None
        self.hello = asyncio.Event()
        self.up = asyncio.Event()
        assert proc.stdout is not None and proc.stdin is not None
        self.conn = BridgeConnection(proc.stdout, proc.stdin, self.on_event, default_timeout_s=5.0)
        self.reader = asyncio.create_task(self.conn.read_loop())

    def on_event(self, ev: BridgeEvent) -> None:
        if ev.name == protocol.EVENT_HELLO:
            self.hello.set()
        if ev.name == protocol.EVENT_BROWSER and ev.data.get("browser_pid"):
            self.browser_pid = int(ev.data["browser_pid"])
            self.up.set()


async def spawn(folder: Path, driver: str, proxy: str) -> Bridge:
    os.mkdir(folder, 0o700)
    env = {**os.environ, "CHROME_PATH": CHROME, "TMPDIR": str(folder)}
    env |= {"https_proxy": proxy, "http_proxy": proxy}
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(ROOT / "bridge/src/main.js"),
        "--tenant",
        folder.name,
        "--session-dir",
        str(folder),
        "--driver",
        driver,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=folder,
        env=env,
        start_new_session=True,
    )
    return Bridge(proc)


async def stop(bridge: Bridge) -> None:
    if bridge.proc.returncode is None:
        bridge.proc.terminate()
        try:
            await asyncio.wait_for(bridge.proc.wait(), 10)
        except TimeoutError:
            os.killpg(bridge.proc.pid, 9)
            await bridge.proc.wait()
    bridge.reader.cancel()


def tree(bridge: Bridge) -> tuple[int, int]:
    """(PSS bytes, processes) of the bridge's tree, browser included."""
    roots = [p for p in (bridge.proc.pid, bridge.browser_pid) if p]
    children = policy.children_index(policy.ppid_map())
    pids = policy.process_tree(roots, children)
    return policy.pss_bytes(pids), len(pids)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--sandbox", type=int, default=3)
    ap.add_argument("--settle-s", type=float, default=20.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="session-memory-"))
    server, proxy = await blackhole()
    bridges: list[Bridge] = []
    try:
        real = [await spawn(work / f"real{i}", "wwebjs", proxy) for i in range(args.sessions)]
        sandbox = [await spawn(work / f"sandbox{i}", "scripted", proxy) for i in range(args.sandbox)]
        bridges = real + sandbox
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(b.up.wait() for b in real)), 120)
        await asyncio.wait_for(asyncio.gather(*(b.hello.wait() for b in sandbox)), 60)
        print(f"{len(real)} real bridge(s) with their browser up in {time.monotonic() - started:.1f}s")
        await asyncio.sleep(args.settle_s)  # let Chromium's start-up allocations settle
        for name, group in (("wwebjs + Chromium", real), ("scripted (sandbox)", sandbox)):
            if not group:
                continue
            figures = [tree(b) for b in group]
            pss = [f[0] / MiB for f in figures]
            print(
                f"{name}: PSS per session median {statistics.median(pss):.0f} MiB "
                f"(min {min(pss):.0f}, max {max(pss):.0f}), {figures[0][1]} processes each, "
                f"total {sum(pss):.0f} MiB for {len(group)}"
            )
    finally:
        await asyncio.gather(*(stop(b) for b in bridges), return_exceptions=True)
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
