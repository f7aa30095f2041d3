"""Mechanics of one bridge child: spawn, read pipes, signal, wait, kill the group; and the profile
cleanup that frees a Chromium profile. No policy here (manager.py and policy.py decide *when*).

Each bridge runs in its own session and process group (``start_new_session``) with its cwd and
TMPDIR inside the tenant folder. Exit is observed through a pidfd on the event loop (no thread per
child, no blocking ``waitpid``). Puppeteer starts Chromium detached in a group of its own, so killing
the bridge's group does not reach it: ``cleanup_profile`` finds whatever still holds the profile by
its exact ``--user-data-dir=<dir>`` argument, kills those groups (TERM, then KILL after 3 s) and only
then removes the Singleton* locks (the cleanup measured to work on Debian's Chromium).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from control_plane.bridge.protocol import BridgeConnection, BridgeEvent, BridgeStdoutProtocol

log = logging.getLogger(__name__)

SINGLETON_FILES = ("SingletonLock", "SingletonSocket", "SingletonCookie")
PROFILE_KILL_WAIT_S = 3.0
PIPE_DRAIN_S = 1.0
STDERR_LINE_MAX = 4096


def _reap(pid: int) -> int | None:
    """waitpid(WNOHANG): the exit code (negative signal number when killed), or None if running."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere; the exit code is lost
        return -255
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


class BridgeProcess:
    """One running bridge: the OS process, its pipes and its protocol connection."""

    def __init__(self, popen: subprocess.Popen, *, log_context: str) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the bridge leads its own group
        self.started_at = time.monotonic()
        self.log_context = log_context
        self.conn: BridgeConnection | None = None
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pipes: list[tuple[asyncio.BaseTransport, asyncio.Future[None]]] = []  # stdout, stderr
        self._pidfd: int | None = None
        self._poll_task: asyncio.Task | None = None

    # -- spawn --
    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        on_event: Callable[[BridgeEvent], None],
        on_stderr: Callable[[str], None],
        log_context: str,
        default_timeout_s: float = 10.0,
        on_heartbeat: Callable[[], None] | None = None,
    ) -> BridgeProcess:
        # Popen (vfork+exec, ~1 ms) rather than asyncio's subprocess: exit is watched through a pidfd
        # below, so there is no child watcher and no thread per child.
        popen = subprocess.Popen(  # noqa: ASYNC220 -- deliberate, see above; it does not block
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        self = cls(popen, log_context=log_context)
        try:
            await self._attach(on_event, on_stderr, default_timeout_s, on_heartbeat)
        except BaseException:
            self.kill_group(signal.SIGKILL)
            await self.wait()
            raise
        return self

    async def _attach(self, on_event, on_stderr, default_timeout_s: float, on_heartbeat=None) -> None:
        # Both output pipes are read by protocols called straight from the loop's read callback: no
        # StreamReader, no reader task, no future per line (an idle bridge is a heartbeat line every
        # few seconds, and that wake-up is the control plane's idle cost per tenant).
        loop = asyncio.get_running_loop()
        self._watch_exit(loop)
        transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, self.popen.stdin)
        writer = asyncio.StreamWriter(transport, proto, None, loop)
        self.conn = BridgeConnection(
            None,
            writer,
            on_event,
            on_heartbeat=on_heartbeat,
            default_timeout_s=default_timeout_s,
            log_context=self.log_context,
        )
        conn = self.conn
        out_t, out_p = await loop.connect_read_pipe(lambda: BridgeStdoutProtocol(conn), self.popen.stdout)
        self._pipes.append((out_t, out_p.closed))
        err_t, err_p = await loop.connect_read_pipe(lambda: StderrLines(on_stderr), self.popen.stderr)
        self._pipes.append((err_t, err_p.closed))

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): poll instead
            self._poll_task = asyncio.create_task(self._poll_exit())
            return
        loop.add_reader(self._pidfd, self._on_pidfd)
        self._on_pidfd()  # it may have exited already

    def _on_pidfd(self) -> None:
        code = _reap(self.pid)
        if code is None:
            return
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._set_exit(code)

    async def _poll_exit(self) -> None:
        """Fallback without a pidfd: nothing signals a child's exit, so poll waitpid."""
        while (code := _reap(self.pid)) is None:  # noqa: ASYNC110 -- no event to wait on
            await asyncio.sleep(0.1)
        self._set_exit(code)

    def _set_exit(self, code: int) -> None:
        self.popen.returncode = code  # so Popen does not think it still runs
        if not self._exit.done():
            self._exit.set_result(code)

    # -- state --
    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    @property
    def exited(self) -> bool:
        return self._exit.done()

    def exit_future(self) -> asyncio.Future[int]:
        return self._exit

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    # -- signals --
    def send_signal(self, sig: int) -> None:
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signals the bridge's whole process group (whatever it started that did not detach)."""
        if self.pgid == os.getpgrp():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    # -- waiting --
    async def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, or None if it still runs after ``timeout_s``. Never blocks the loop."""
        try:
            code = await asyncio.wait_for(asyncio.shield(self._exit), timeout_s)
        except TimeoutError:
            return None
        await self._drain()
        return code

    async def _drain(self) -> None:
        """After exit: let the pipes finish (bounded: a detached grandchild may hold them open;
        those are then closed, which ends the connection with ``BridgeClosed``)."""
        pending = [closed for _, closed in self._pipes if not closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=PIPE_DRAIN_S)
            for transport, closed in self._pipes:
                if not closed.done():
                    transport.close()
            await asyncio.wait(pending, timeout=PIPE_DRAIN_S)
        if self.conn is not None:
            self.conn.close_writer()

    async def terminate(self, stop_wait_s: float) -> int:
        """SIGTERM (the bridge tears down and exits 0), wait up to stop_wait_s, then SIGKILL the group."""
        self.send_signal(signal.SIGTERM)
        code = await self.wait(stop_wait_s)
        if code is None:
            log.warning(
                "%sbridge pid=%d ignored SIGTERM for %.1fs: killing its group",
                self.log_context,
                self.pid,
                stop_wait_s,
            )
            return await self.kill()
        self.kill_group(signal.SIGKILL)  # leftovers of the group, if any
        return code

    async def kill(self) -> int:
        self.kill_group(signal.SIGKILL)
        self.send_signal(signal.SIGKILL)
        code = await self.wait()
        assert code is not None
        self.kill_group(signal.SIGKILL)
        return code

    async def close(self) -> None:
        """Releases everything; the process must have exited."""
        await self._drain()
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class StderrLines(asyncio.Protocol):
    """The bridge's stderr (its log), line by line to ``on_line``, long lines cut at STDERR_LINE_MAX."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._buf = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        *lines, self._buf = (self._buf + data).split(b"\n")
        if len(self._buf) > STDERR_LINE_MAX:
            lines.append(self._buf)
            self._buf = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        if line.strip():
            try:
                self._on_line(line[:STDERR_LINE_MAX].decode("utf-8", "replace"))
            except Exception:
                log.exception("stderr handler failed")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._emit(self._buf)
        self._buf = b""
        if not self.closed.done():
            self.closed.set_result(None)


def bridge_env(*, tmpdir: Path, chrome_path: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a bridge: never the control plane's secrets or database URL."""
    base = dict(os.environ if base is None else base)
    keep = (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "NODE_OPTIONS",
        "NODE_EXTRA_CA_CERTS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    )
    env = {k: base[k] for k in keep if k in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TMPDIR"] = str(tmpdir)
    env["CHROME_PATH"] = chrome_path
    return env


# --- profile cleanup ---------------------------------------------------------------------------


def iter_cmdlines() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process we can read, straight from /proc (cheap, no psutil objects)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        if raw:
            yield pid, raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")


def find_profile_holders(profile_dirs: Iterable[Path | str]) -> list[int]:
    """Processes whose command line has exactly ``--user-data-dir=<dir>`` for one of the dirs."""
    wanted = {f"--user-data-dir={d}" for d in profile_dirs}
    return [pid for pid, argv in iter_cmdlines() if wanted.intersection(argv)]


def _arg_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def find_orphans(root: Path) -> list[int]:
    """Boot sweep: bridges (``--session-dir``) and browsers (``--user-data-dir=``) under ``root``."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for pid, argv in iter_cmdlines():
        for name in ("--session-dir", "--user-data-dir"):
            value = _arg_value(argv, name)
            if value and (value + "/").startswith(prefix):
                found.append(pid)
                break
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")  # a zombie holds nothing


def kill_process_groups(pids: Iterable[int], wait_s: float = PROFILE_KILL_WAIT_S) -> int:
    """TERM the group of each pid, wait up to ``wait_s`` for all to go, then KILL what remains.
    Blocking (run it in a thread). Never signals our own group. Returns how many were found alive."""
    own_group = os.getpgrp()
    targets: dict[int, int | None] = {}
    for pid in set(pids):
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        targets[pid] = None if pgid in (own_group, 0, 1) else pgid
    if not targets:
        return 0

    def signal_all(sig: int) -> None:
        for pid, pgid in targets.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid is not None:
                    os.killpg(pgid, sig)
                else:
                    os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in targets) and time.monotonic() < deadline:
        time.sleep(0.02)
    if any(_alive(p) for p in targets):
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while any(_alive(p) for p in targets) and time.monotonic() < deadline:
            time.sleep(0.02)
    return len(targets)


def remove_singletons(profile_dir: Path) -> list[str]:
    """Unlinks Chromium's Singleton* locks (symlinks, possibly dangling: checked with lexists)."""
    removed = []
    for name in SINGLETON_FILES:
        path = os.path.join(profile_dir, name)
        if os.path.lexists(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(name)
    return removed


def cleanup_profile_sync(profile_dirs: Iterable[Path]) -> tuple[int, list[str]]:
    """Kill first, then delete the locks (deleting while an orphan runs lets two browsers share it)."""
    dirs = list(profile_dirs)
    killed = kill_process_groups(find_profile_holders(dirs))
    removed: list[str] = []
    for d in dirs:
        removed += remove_singletons(d)
    return killed, removed


async def cleanup_profile(profile_dirs: Iterable[Path]) -> tuple[int, list[str]]:
    return await asyncio.to_thread(cleanup_profile_sync, list(profile_dirs))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"signal_{signal.Signals(-code).name}"
        except ValueError:
            return f"signal_{-code}"
    return f"exit_{code}"


__all__: list[Any] = [
    "BridgeProcess",
    "bridge_env",
    "cleanup_profile",
    "cleanup_profile_sync",
    "describe_exit",
    "find_orphans",
    "find_profile_holders",
    "kill_process_groups",
    "remove_singletons",
]
