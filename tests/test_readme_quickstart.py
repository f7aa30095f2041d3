"""The README's quickstart, followed literally: the commands of its ```sh quickstart blocks run in bash
(one script, in order, from the repository root), after its ```sh quickstart-server block (scripts/run)
started the service on a fresh data folder and a free port, until the reply is received over
Socket.IO. Nothing here knows the steps: change the README and this test follows."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from control_plane.config import _ENV
from tests.conftest import ROOT
from tests.support import free_port

README = ROOT / "README.md"
BLOCK = re.compile(r"^```sh (quickstart(?:-server)?)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
pytestmark = pytest.mark.timeout(600)


def quickstart_blocks(text: str) -> tuple[str, str]:
    """(the server block, the other blocks joined in order)."""
    blocks = BLOCK.findall(text)
    servers = [body for kind, body in blocks if kind == "quickstart-server"]
    steps = [body for kind, body in blocks if kind == "quickstart"]
    assert len(servers) == 1 and len(steps) >= 5, blocks
    return servers[0], "\n".join(steps)


def fresh_env(tmp_path: Path, port: int) -> dict[str, str]:
    """This shell's environment without any of the gateway's settings (a newcomer's), then a free port
    and fresh data and session folders."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV and k not in ("GW", "KEY")}
    env.update(
        PORT=str(port),
        DATA_DIR=str(tmp_path / "data"),
        SESSIONS_DIR=str(tmp_path / "s"),  # short: browser profile paths have length limits
        TMPDIR=str(tmp_path),
    )
    return env


def checkout(tmp_path: Path) -> Path:
    """Where to follow the README: the repository itself, unless its ``.venv`` is a link to another
    checkout's (a developer's worktree): scripts/run would then install this tree into that venv, so a
    copy of the tree (without .venv, .git and run data) gets a fresh venv of its own instead."""
    if not (ROOT / ".venv").is_symlink():
        return ROOT
    copy = tmp_path / "repo"
    copy.mkdir()
    excluded = [f"--exclude=./{name}" for name in (".venv", ".git", "artifacts", "data", "sessions")]
    pack = subprocess.run(
        ["tar", *excluded, "--exclude=__pycache__", "--exclude=.mypy_cache", "-cf", "-", "."],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-xf", "-"], cwd=copy, input=pack.stdout, check=True)
    return copy


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"scripts/run exited {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_blocks_are_found():
    server, steps = quickstart_blocks(README.read_text())
    assert server.strip() == "scripts/run"
    assert "/api/messages" in steps and "/api/sandbox/incoming" in steps and "socketio" in steps


def test_readme_quickstart_reaches_a_received_reply(tmp_path):
    server_block, steps = quickstart_blocks(README.read_text())
    repo = checkout(tmp_path)
    port = free_port()
    env = fresh_env(tmp_path, port)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", server_block],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", server, log, timeout=300)
        assert (tmp_path / "data" / "admin_token").exists()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", steps],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        assert re.search(r"^API key: wgk_", output, re.MULTILINE), output
        assert re.search(r"^message [0-9a-f]{32} sent$", output, re.MULTILINE), output
        assert re.search(r"^received: \+?15550001111 .*Thanks, got it!", output, re.MULTILINE), output
    finally:
        stop(server)
