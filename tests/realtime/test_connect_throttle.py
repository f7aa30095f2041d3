"""Socket.IO connects go through the same authentication throttle as the HTTP API
(control_plane/auth_throttle.py), with the real python-socketio client."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from tests.realtime.conftest import PyConsumer, wait_until
from tests.support import FakeClock

pytestmark = pytest.mark.mariadb


async def connect(node, auth: dict) -> PyConsumer:
    consumer = PyConsumer()
    await consumer.connect(node.url, auth, expect_ok=False)
    await wait_until(lambda: consumer.connected or consumer.errors, what="connect or refusal")
    return consumer


async def test_wrong_key_connects_are_throttled_and_the_right_key_gets_in_after_the_wait(node, new_tenant):
    tenant = await new_tenant(node)
    clock = FakeClock()
    clock.drive(node.app)
    made = []
    try:
        codes = []
        for _ in range(7):
            made.append(await connect(node, {"token": "wgk_" + secrets.token_urlsafe(32)}))
            codes.append(made[-1].errors[0]["data"]["code"])
        assert codes == ["invalid_credentials"] * 5 + ["too_many_attempts"] * 2  # before: 7 x invalid
        assert made[-1].errors[0]["data"]["retry_after"] == 1
        # the right key waits too (it is not even looked at), and so does the HTTP API: one throttle
        made.append(await connect(node, {"token": tenant["key"]}))
        assert not made[-1].connected and made[-1].errors[0]["data"]["code"] == "too_many_attempts"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{node.url}/api/me", headers=tenant["headers"]) as resp,
        ):
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        clock.advance(1)
        made.append(await connect(node, {"token": tenant["key"]}))
        assert made[-1].connected, made[-1].errors
    finally:
        for consumer in made:
            await consumer.close()
