"""kill -9 of the control plane mid-dispatch: after a restart every message is sent exactly once.

The control plane runs as a real subprocess (``python -m control_plane serve``) against the test
database and the fake Graph API (in this process, so it counts every send). After the SIGKILL the
test plays Meta: it delivers the signed "sent" status webhooks of everything the fake accepted (each
carries ``biz_opaque_callback_data`` = our message id), which is how the new process settles the
messages whose answer the old one never recorded.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from tests.conftest import ADMIN_TOKEN, ROOT, SECRET_KEY
from tests.fakes import graph_api as g
from tests.fakes.graph_api import FakeGraphAPI
from tests.support import free_port, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
N = 500


class ControlPlane:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        log = open(self.log_path, "ab")  # noqa: ASYNC230, SIM115  (the child's stdout, kept open)
        self.proc = subprocess.Popen(  # noqa: ASYNC220  (starting the server process; it returns at once)
            [sys.executable, "-m", "control_plane", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        async def healthy() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                async with http.get(self.url + "/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(
            healthy, timeout=90, interval=0.1, message="control plane up"
        )  # slow imports on a busy box

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.mark.mariadb
@pytest.mark.timeout(300)
async def test_kill9_mid_dispatch_every_message_sent_exactly_once(
    database_url, sync_engine, empty_db, tmp_path
):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path / "data"),
        "SESSIONS_DIR": str(tmp_path / "s"),
        "SUPERVISOR_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        "MESSAGING_LEASE_S": "2",
        "MESSAGING_RECONCILE_S": "6",
        "MESSAGING_POLL_S": "0.2",
        "CLOUD_RATE_PER_S": "80",
    }
    async with FakeGraphAPI() as fake, aiohttp.ClientSession() as http:
        env["GRAPH_API_URL"] = fake.url
        # The first process only takes requests (no dispatcher): all 500 are queued before any is sent.
        intake = ControlPlane({**env, "MESSAGING_ENABLED": "false"}, tmp_path / "cp0.log")
        first = ControlPlane(env, tmp_path / "cp1.log")
        second = ControlPlane(env, tmp_path / "cp2.log")
        t0 = time.monotonic()
        try:
            await intake.start(http)
            first.url = intake.url
            async with http.post(first.url + "/api/tenants", json={"name": "kill9"}, headers=ADMIN) as resp:
                tenant = await resp.json()
            headers = {"Authorization": f"Bearer {tenant['api_key']}"}
            pnid, waba, token = "106540352242922", "102290129340398", "EAAG-" + secrets.token_hex(8)
            app_secret = "secret-" + secrets.token_hex(8)
            fake.add_number(pnid, waba, token)
            fake.add_template(waba, "order_update", "en_US")
            async with http.post(
                first.url + "/api/whatsapp/config",
                headers=headers,
                json={
                    "api_type": "business_api",
                    "fallback_policy": "business_api_only",
                    "phone_number_id": pnid,
                    "waba_id": waba,
                    "access_token": token,
                    "app_secret": app_secret,
                    "verify_token": "verify-" + secrets.token_hex(8),
                },
            ) as resp:
                assert resp.status == 201, await resp.text()

            sem = asyncio.Semaphore(20)

            async def enqueue(i: int) -> str:
                async with (
                    sem,
                    http.post(
                        first.url + "/api/messages",
                        headers=headers,
                        json={
                            "to": f"+1650{i:07d}",
                            "type": "template",
                            "template": {"name": "order_update", "language": "en_US"},
                        },
                    ) as resp,
                ):
                    assert resp.status == 202, await resp.text()
                    return (await resp.json())["id"]

            ids = await asyncio.gather(*(enqueue(i) for i in range(N)))
            assert len(set(ids)) == N
            intake.kill9()  # it never dispatched: nothing in flight
            assert fake.sent == []
            t_enqueued = time.monotonic()
            await first.start(http)
            # Mid-dispatch: some sent, most still queued, some in flight.
            await wait_for(lambda: len(fake.sent) >= 120, timeout=30, message="dispatch under way")
            first.kill9()
            sent_before = len(fake.sent)
            assert sent_before < N, "the kill came too late to mean anything"

            await second.start(http)
            # Meta's status webhooks for everything it accepted (the new process settles the unknown).
            sender = fake.webhooks(second.url + "/api/whatsapp/webhook", app_secret)
            records = list(fake.sent)
            for start in range(0, len(records), 100):
                items = [
                    g.status(
                        r["wamid"], "sent", r["to"], biz_opaque_callback_data=r["biz_opaque_callback_data"]
                    )
                    for r in records[start : start + 100]
                ]
                delivery = await sender.send(g.messages_payload(waba, pnid, statuses=items))
                assert delivery.status == 200, delivery.text

            def counts() -> dict[str, int]:
                with sync_engine.connect() as conn:
                    return dict(
                        conn.execute(
                            sa.text(
                                "SELECT status, COUNT(*) FROM messages WHERE tenant_id = :t GROUP BY status"
                            ),
                            {"t": tenant["id"]},
                        ).all()
                    )

            t_restarted = time.monotonic()
            await wait_for(
                lambda: counts().get("sent", 0) == N,
                timeout=60,
                interval=0.25,
                message=f"all {N} sent after the restart",
            )
            t_done = time.monotonic()
            per_id: dict[str, int] = {}
            for r in fake.sent:
                per_id[r["biz_opaque_callback_data"]] = per_id.get(r["biz_opaque_callback_data"], 0) + 1
            assert set(per_id) == set(ids)
            assert [k for k, n in per_id.items() if n != 1] == [], "sent more than once"
            assert len(fake.sent) == N
            with sync_engine.connect() as conn:
                recovered = conn.execute(
                    sa.text(
                        "SELECT COUNT(*) FROM message_transitions WHERE tenant_id = :t AND reason LIKE :r"
                    ),
                    {"t": tenant["id"], "r": "%recovered after an unknown outcome%"},
                ).scalar()
                pmids = conn.execute(
                    sa.text("SELECT COUNT(DISTINCT provider_message_id) FROM messages WHERE tenant_id = :t"),
                    {"t": tenant["id"]},
                ).scalar()
            assert pmids == N
            print(
                f"\nkill -9 after {sent_before} sends; {recovered} settled by status webhooks; "
                f"{N} sent exactly once; enqueue {t_enqueued - t0:.1f}s, "
                f"to restart {t_restarted - t_enqueued:.1f}s, to all sent {t_done - t_restarted:.1f}s",
                flush=True,
            )
        finally:
            for cp in (intake, first, second):
                cp.stop()
