"""The cross-tenant matrix on Socket.IO, with both clients a CRM would use (python-socketio and the
npm socket.io-client in Node): tenant B's key cannot subscribe to tenant A (by ``tenant_id``,
``tenants`` or a ``since`` map naming A), and what B does receive (its replay from ``since: 0``, then
live events while A's events are being made) holds nothing of A's. Controls: A's key and the admin
for A do receive A's events, so the check could see them."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from tests.chaos.world import Owned
from tests.conftest import ADMIN_TOKEN
from tests.realtime.conftest import Consumer, NodeConsumer, PyConsumer, wait_until

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(180)]


def _refused(a: Owned, b: Owned) -> list[dict[str, Any]]:
    """B's key asking for A: each must be refused."""
    return [
        {"token": b.key, "tenant_id": a.id},
        {"token": b.key, "tenant_id": a.id, "since": 0},
        {"token": b.key, "tenants": [a.id]},
        {"token": b.key, "tenants": [b.id, a.id], "since": 0},
    ]


def _admitted(a: Owned, b: Owned) -> list[dict[str, Any]]:
    """B's key connecting: admitted, to B's events only."""
    return [
        {"token": b.key, "since": 0},
        {"token": b.key},
        {"token": b.key, "since": {a.id: 0, b.id: 0}},
        {"token": b.key, "tenant_id": b.id, "since": 0},
    ]


@pytest.fixture
async def made() -> Any:
    consumers: list[Consumer] = []
    yield consumers
    for consumer in consumers:
        await consumer.close()  # type: ignore[attr-defined]


async def _connect(made: list[Consumer], kind: str, url: str, auth: dict[str, Any]) -> Consumer:
    consumer: Consumer = PyConsumer() if kind == "py" else NodeConsumer()
    made.append(consumer)
    await consumer.connect(url, auth, expect_ok=False)  # type: ignore[attr-defined]
    await wait_until(lambda: consumer.connected or consumer.errors, 15, f"{kind} connect or refusal")
    return consumer


async def _inbound(gateway, tenant: Owned, text: str) -> None:
    send = gateway.fake.webhooks(f"{gateway.url}/api/whatsapp/webhook", tenant.app_secret)
    try:
        delivery, _ = await send.text(tenant.pnid, tenant.user, text)
        assert delivery.status == 200, delivery.text
    finally:
        await send.close()


def _texts(consumer: Consumer) -> str:
    return json.dumps([env for _, env in consumer.events])


async def test_tenant_b_never_receives_tenant_a_events_on_either_client(
    gateway, two_tenants, node_client_ready, made, figures
):
    a, b = two_tenants
    refused, b_clients, controls = 0, [], []
    for kind in ("py", "node"):
        for auth in _refused(a, b):
            consumer = await _connect(made, kind, gateway.url, auth)
            assert not consumer.connected, f"{kind} {auth}: B's key was let in for A"
            codes = [(e.get("data") or {}).get("code") for e in consumer.errors]
            assert codes == ["forbidden"], f"{kind} {auth}: {consumer.errors}"
            refused += 1
        for auth in _admitted(a, b):
            consumer = await _connect(made, kind, gateway.url, auth)
            assert consumer.connected, f"{kind} {auth}: {consumer.errors}"
            b_clients.append((kind, auth, consumer))
        controls.append(await _connect(made, kind, gateway.url, {"token": a.key, "since": 0}))
        controls.append(
            await _connect(made, kind, gateway.url, {"token": ADMIN_TOKEN, "tenant_id": a.id, "since": 0})
        )
    assert all(c.connected for c in controls)

    # A's events while B listens, then one of B's: once B has that one, A's would have arrived too.
    a_text = f"fresh secret of A {secrets.token_hex(6)}"
    a.markers.add(a_text)
    await _inbound(gateway, a, a_text)
    b_text = f"barrier of B {secrets.token_hex(6)}"
    await _inbound(gateway, b, b_text)
    for kind, auth, consumer in b_clients:
        await wait_until(lambda c=consumer: b_text in _texts(c), 20, f"{kind} {auth} gets B's new event")
    for consumer in controls:
        await wait_until(lambda c=consumer: a_text in _texts(c), 20, "A's consumers get A's new event")

    seen = 0
    for kind, auth, consumer in b_clients:
        assert consumer.tenants() == {b.id}, f"{kind} {auth}: events of {consumer.tenants()}"
        leaked = a.leaked(_texts(consumer))
        assert not leaked, f"{kind} {auth}: A's data reached B: {leaked}"
        seen += len(consumer.events)
    replayed = [c for _, auth, c in b_clients if auth.get("since") == 0]
    assert all(len(c.events) >= 5 for c in replayed)  # B's own history did replay
    assert all(c.tenants() == {a.id} for c in controls)
    figures(
        "cross-tenant matrix (Socket.IO)",
        clients="python-socketio+socket.io-client",
        refused=refused,
        b_connections=len(b_clients),
        b_events_seen=seen,
        a_events_seen_by_controls=sum(len(c.events) for c in controls),
        leaks=0,
    )
