"""The deployment files of docs/OPERATIONS.md (deploy/): the systemd unit passes
``systemd-analyze verify``; the nginx site passes ``nginx -t`` and, run for real (its own prefix and
ports under tmp, a throwaway self-signed certificate, never the system nginx), carries HTTPS, the
Socket.IO WebSocket upgrade and Meta's webhook to a real control plane; the logrotate snippet
rotates a log for real (its own state file); the doc includes each file verbatim."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import socketio

from tests.ops.server import REPO, Server, free_port, server_env
from tests.ops.test_graceful_shutdown import api, ready_sandbox_tenant
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "whatsapp-gateway.service"
SITE = DEPLOY / "nginx" / "whatsapp-gateway.conf"
LOGROTATE = DEPLOY / "logrotate" / "whatsapp-gateway"
OPERATIONS = REPO / "docs" / "OPERATIONS.md"


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test installs it: ensure_ops_tools in scripts/lib.sh)")
    return path


def test_the_systemd_unit_verifies(tmp_path):
    env_file = tmp_path / "gateway.env"
    shutil.copy(DEPLOY / "systemd" / "gateway.env.example", env_file)
    unit = tmp_path / "whatsapp-gateway.service"  # installed here: this checkout stands for /opt/...
    unit.write_text(
        UNIT.read_text()
        .replace("/opt/whatsapp-gateway", str(REPO))
        .replace("/etc/whatsapp-gateway/gateway.env", str(env_file))
    )
    done = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    text = UNIT.read_text()
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert stop_s >= 5 + 3  # above STOP_WAIT_S (default 5) + the shutdown's own deadline
    assert "KillMode=mixed" in text and "UMask=0077" in text
    assert re.search(r"^ExecStart=\S+/python -m control_plane serve$", text, re.M)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=gateway.example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def nginx_prefix(tmp: Path, upstream_port: int) -> tuple[Path, int, int]:
    """A private nginx prefix running deploy/nginx's site on free ports: (conf, http, https)."""
    cert, key = self_signed(tmp)
    http_port, https_port = free_port(), free_port()
    site = SITE.read_text()
    site = site.replace("/etc/letsencrypt/live/gateway.example.com/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/gateway.example.com/privkey.pem", str(key))
    site = site.replace("server 127.0.0.1:5000;", f"server 127.0.0.1:{upstream_port};")
    site = re.sub(r"listen \[::\]:\d+[^;]*;\n", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = site.replace("/var/www/html", str(tmp / "www"))
    assert f"server 127.0.0.1:{upstream_port};" in site and "letsencrypt" not in site
    (tmp / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {name}_temp_path {tmp / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {tmp / 'site.conf'};\n}}\n"
    )
    return conf, http_port, https_port


def test_the_nginx_site_passes_nginx_t(tmp_path):
    conf, _, _ = nginx_prefix(tmp_path, free_port())
    done = subprocess.run(
        [tool("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr


@pytest.fixture
async def server(tmp_path, database_url, empty_db):
    """A control plane, killed at the end whatever happened (it shares the test database)."""
    made = Server(server_env(database_url, tmp_path / "gw"), tmp_path / "server.log")
    try:
        await made.start()
        yield made
    finally:
        made.kill()


async def test_nginx_carries_https_websocket_and_the_webhook(tmp_path, server):
    conf, http_port, https_port = nginx_prefix(tmp_path, int(server.env["PORT"]))
    nginx = await asyncio.create_subprocess_exec(
        tool("nginx"),
        "-p",
        str(tmp_path),
        "-c",
        str(conf),
        "-e",
        str(tmp_path / "error.log"),
        "-g",
        "daemon off;",
    )
    base = f"https://127.0.0.1:{https_port}"
    client = socketio.AsyncClient(ssl_verify=False, reconnection=False)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:

            async def up() -> bool:
                try:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, timeout=15, interval=0.1, message="nginx answers over TLS")
            async with http.get(f"http://127.0.0.1:{http_port}/admin", allow_redirects=False) as resp:
                assert resp.status == 301 and resp.headers["Location"].startswith("https://")

            proxied = Server(server.env, server.log_path)
            proxied.url = base  # the API through nginx from here on
            tenant = await ready_sandbox_tenant(http, proxied, "behind-nginx")

            events: list[dict] = []
            client.on("*", lambda event, envelope: events.append(envelope))
            await client.connect(
                base, auth={"token": tenant["api_key"], "since": 0}, transports=["websocket"], wait_timeout=10
            )
            assert client.transport() == "websocket"
            await wait_for(
                lambda: any(e["data"].get("state") == "ready" for e in events),
                timeout=10,
                message="the replayed session.state events over wss",
            )
            await api(
                http,
                proxied,
                "POST",
                "/api/sandbox/incoming",
                tenant["headers"],
                json={"from": "15550001234", "text": "through nginx"},
            )
            await wait_for(
                lambda: any(e["type"] == "message.received" for e in events),
                timeout=10,
                message="a live event over wss",
            )

            # Meta's webhook verification, through the proxy
            config = {
                "api_type": "both",
                "phone_number_id": "106540352242922",
                "access_token": "EAAG-secret-token-123456",
                "verify_token": "verify-me-please",
                "app_secret": "app-secret-abcdef",
            }
            await api(http, proxied, "PUT", "/api/whatsapp/config", tenant["headers"], json=config)
            params = {
                "hub.mode": "subscribe",
                "hub.verify_token": "verify-me-please",
                "hub.challenge": "1158201444",
            }
            async with http.get(base + "/api/whatsapp/webhook", params=params) as resp:
                assert resp.status == 200 and await resp.text() == "1158201444"
            async with http.post(
                base + "/api/whatsapp/webhook",
                data=b'{"object": "whatsapp_business_account"}',
                headers={"Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 401  # reached the gateway: unsigned deliveries are refused there
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
        with contextlib.suppress(ProcessLookupError):
            nginx.terminate()
        await nginx.wait()


def test_the_logrotate_snippet_rotates(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "gateway.log").write_text("2026-12-06 05:00:00,000 INFO control_plane serving\n" * 100)
    snippet = tmp_path / "whatsapp-gateway"
    text = LOGROTATE.read_text().replace("/var/log/whatsapp-gateway", str(log_dir))
    snippet.write_text(re.sub(r"^\s*su .*\n", "", text, flags=re.M))  # the service user is not here
    snippet.chmod(0o644)
    state = tmp_path / "state"
    done = subprocess.run(
        [tool("logrotate"), "-f", "-s", str(state), str(snippet)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (log_dir / "gateway.log").stat().st_size == 0  # copytruncate: emptied in place
    assert (log_dir / "gateway.log.1").read_text().count("serving") == 100


def test_operations_md_includes_the_files_verbatim():
    doc = OPERATIONS.read_text()
    for path in (UNIT, SITE, LOGROTATE, DEPLOY / "systemd" / "gateway.env.example"):
        assert path.read_text().strip() in doc, f"{path.relative_to(REPO)} differs from docs/OPERATIONS.md"
    assert "](docs/OPERATIONS.md)" in (REPO / "README.md").read_text()
