"""A real control plane (``python -m control_plane serve``) in its own process group, for the tests
of what an operator sees: signals, exit times, files on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import ADMIN_TOKEN, SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, work: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST"))}
    return {
        **env,
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(work / "data"),
        "SESSIONS_DIR": str(work / "sessions"),
        "LOG_LEVEL": "INFO",
        "BOOT_STAGGER_S": "0.01",
        **overrides,
    }


class Server:
    """One ``serve`` process; its output goes to ``log_path`` (appended: a restart adds to it)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, migrate: bool = False) -> None:
        self.env = env
        self.migrate = migrate
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.exit_s: float | None = None

    async def start(self, timeout_s: float = 90) -> None:
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230  (the child keeps its own copy)
            self.proc = subprocess.Popen(  # noqa: ASYNC220  (returns at once)
                [sys.executable, "-m", "control_plane", "serve", *(["--migrate"] if self.migrate else [])],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"control plane exited: {self.log_text()[-3000:]}")
                try:
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"control plane not up: {self.log_text()[-3000:]}")
                await asyncio.sleep(0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after ``timeout_s``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110  (a child process)
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def terminate(self, timeout_s: float) -> float:
        """SIGTERM; returns how long the process took to exit (``timeout_s`` + then SIGKILL if it did
        not)."""
        started = time.monotonic()
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout_s)
        self.exit_s = time.monotonic() - started
        if code is None:
            self.kill()
        return self.exit_s

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
