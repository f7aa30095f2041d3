"""Authentication throttling over HTTP (control_plane/auth_throttle.py): per client address, per
credential prefix, through trusted proxies only, shared through Redis, and still there (in memory)
when Redis is not. Time is a FakeClock injected into the app's throttle: no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from control_plane.app import create_app
from tests.support import FakeClock, free_port, wait_for


def wrong_key(prefix: str = "wgk_") -> str:
    return prefix + secrets.token_urlsafe(32)


@contextlib.asynccontextmanager
async def from_address(ip: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections leave from ``ip`` (any of 127.0.0.0/8 on Linux): a real
    other peer, no proxy headers involved."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0))) as session:
        yield session


async def me(http: aiohttp.ClientSession, url: str, key: str, **headers: str) -> tuple[int, dict, dict]:
    """GET /api/me with ``key``: (status, headers, JSON body)."""
    async with http.get(url, headers={"Authorization": f"Bearer {key}", **headers}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


@pytest.fixture
def clock(client) -> FakeClock:
    clock = FakeClock()
    clock.drive(client.app)
    return clock


@pytest.mark.smoke
async def test_300_wrong_bearer_tokens_from_one_address_are_throttled(client, make_tenant, clock):
    tenant = await make_tenant()
    url = str(client.make_url("/api/me"))
    statuses = []
    for _ in range(300):
        resp = await client.get("/api/me", headers={"Authorization": f"Bearer {wrong_key()}"})
        body = await resp.json()
        statuses.append(resp.status)
        if resp.status == 429:
            assert body["error"]["code"] == "too_many_attempts"
            assert resp.headers["Retry-After"] == "1"
    assert statuses == [401] * 5 + [429] * 295  # before: 300 x 401
    # the right key from ANOTHER address is not held up
    async with from_address("127.0.0.2") as other:
        status, _, body = await me(other, url, tenant["api_key"])
        assert (status, body["id"]) == (200, tenant["id"])
    # from the guessing address it waits like anything else (a right guess looks like a wrong one) ...
    status, headers, body = await me(client.session, url, tenant["api_key"])
    assert (status, headers["Retry-After"], body["error"]["code"]) == (429, "1", "too_many_attempts")
    clock.advance(1)
    # ... and gets in once the short wait is over, which clears the address's failures
    status, _, body = await me(client.session, url, tenant["api_key"])
    assert (status, body["id"]) == (200, tenant["id"])
    for _ in range(5):
        assert (await me(client.session, url, wrong_key()))[0] == 401


@pytest.mark.smoke
async def test_waits_double_up_to_the_cap_and_the_right_token_always_gets_in_after_one(
    client, make_tenant, clock
):
    tenant = await make_tenant()
    url = str(client.make_url("/api/me"))
    waits = []
    for _ in range(40):
        status, headers, _ = await me(client.session, url, wrong_key())
        if status == 429:
            waits.append(int(headers["Retry-After"]))
            clock.advance(waits[-1])
            status, headers, _ = await me(client.session, url, wrong_key())
        assert status == 401
    assert waits[:7] == [1, 2, 4, 8, 16, 30, 30] and set(waits[5:]) == {30}
    status, headers, _ = await me(client.session, url, tenant["api_key"])
    assert status == 429 and int(headers["Retry-After"]) <= 30
    clock.advance(int(headers["Retry-After"]))
    assert (await me(client.session, url, tenant["api_key"]))[0] == 200


@pytest.mark.smoke
async def test_parallel_guesses_after_a_wait_let_one_through(client, clock):
    url = str(client.make_url("/api/me"))
    for _ in range(5):
        assert (await me(client.session, url, wrong_key()))[0] == 401
    clock.advance(1)
    results = await asyncio.gather(*(me(client.session, url, wrong_key()) for _ in range(30)))
    assert sorted(status for status, _, _ in results) == [401] + [429] * 29


@pytest.mark.smoke
async def test_a_client_that_proved_its_token_keeps_working_while_its_address_is_throttled(
    client, make_tenant, clock
):
    tenant = await make_tenant()
    url = str(client.make_url("/api/me"))
    assert (await me(client.session, url, tenant["api_key"]))[0] == 200
    for _ in range(10):
        await me(client.session, url, wrong_key())  # a neighbour behind the same NAT guessing
    assert (await me(client.session, url, wrong_key()))[0] == 429
    assert (await me(client.session, url, tenant["api_key"]))[0] == 200


async def test_the_prefix_limit_spans_addresses_through_a_trusted_proxy(
    aiohttp_client, make_settings, make_tenant, empty_db
):
    proxied = await aiohttp_client(create_app(make_settings(TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8")))
    clock = FakeClock()
    clock.drive(proxied.app)
    tenant = await make_tenant(api_client=proxied)
    key = tenant["api_key"]
    url = str(proxied.make_url("/api/me"))
    # a botnet: every guess from another address, all at the tenant's (visible) key prefix
    statuses = []
    for i in range(20):
        hops = {"X-Forwarded-For": f"203.0.113.{i}"}
        statuses.append((await me(proxied.session, url, wrong_key(key[:10]), **hops))[0])
    assert statuses == [401] * 5 + [429] * 15
    # other prefixes from fresh addresses are not affected
    assert (await me(proxied.session, url, wrong_key(), **{"X-Forwarded-For": "198.51.100.1"}))[0] == 401
    # the proxy chain is walked from the right: a client-written hop cannot pick its bucket
    spoofed = {"X-Forwarded-For": "198.51.100.99, 203.0.113.0, 10.1.2.3"}
    assert (await me(proxied.session, url, wrong_key(), **spoofed))[0] == 401
    for _ in range(3):
        hops = {"X-Forwarded-For": "203.0.113.0, 10.9.9.9"}
        assert (await me(proxied.session, url, wrong_key(), **hops))[0] == 401
    status, _, _ = await me(proxied.session, url, wrong_key(), **{"X-Forwarded-For": "1.1.1.1, 203.0.113.0"})
    assert status == 429  # 203.0.113.0 (1 + 1 + 3 failures) waits, whatever it wrote before
    clock.advance(1)
    assert (await me(proxied.session, url, key, **{"X-Forwarded-For": "198.51.100.2"}))[0] == 200


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(aiohttp_client, make_settings, empty_db):
    direct = await aiohttp_client(create_app(make_settings(TRUSTED_PROXIES="10.0.0.0/8")))
    url = str(direct.make_url("/api/me"))
    statuses = [
        (await me(direct.session, url, wrong_key(), **{"X-Forwarded-For": f"203.0.113.{i}"}))[0]
        for i in range(8)
    ]
    assert statuses == [401] * 5 + [429] * 3  # all counted against the real peer, 127.0.0.1


@pytest.mark.mariadb
async def test_redis_shares_the_state_between_two_app_instances(
    aiohttp_client, make_settings, make_tenant, redis_url, empty_db
):
    a = await aiohttp_client(create_app(make_settings(REDIS_URL=redis_url)))
    b = await aiohttp_client(create_app(make_settings(REDIS_URL=redis_url)))
    clock = FakeClock()
    clock.drive(a.app, b.app)
    tenant = await make_tenant(api_client=a)
    url_a, url_b = str(a.make_url("/api/me")), str(b.make_url("/api/me"))
    for url in (url_a, url_b, url_a, url_b, url_a):
        assert (await me(a.session, url, wrong_key()))[0] == 401
    status, headers, _ = await me(b.session, url_b, wrong_key())
    assert (status, headers["Retry-After"]) == (429, "1")
    assert (await me(a.session, url_a, tenant["api_key"]))[0] == 429
    clock.advance(1)
    assert (await me(b.session, url_b, tenant["api_key"]))[0] == 200  # on B: clears the address on A too
    for _ in range(5):
        assert (await me(a.session, url_a, wrong_key()))[0] == 401


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A private redis-server this test may stop or kill."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
    )

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    await wait_for(listening, timeout=10, message="redis-server listening")
    yield f"redis://127.0.0.1:{port}/0", proc
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_redis_down_falls_back_to_memory_and_never_5xx(
    aiohttp_client, make_settings, make_tenant, own_redis, empty_db, outage
):
    url_redis, proc = own_redis
    app_client = await aiohttp_client(create_app(make_settings(REDIS_URL=url_redis)))
    clock = FakeClock()
    clock.drive(app_client.app)
    tenant = await make_tenant(api_client=app_client)
    url = str(app_client.make_url("/api/me"))
    assert (await me(app_client.session, url, wrong_key()))[0] == 401  # stored in Redis
    try:
        if outage == "killed":
            proc.kill()
            await proc.wait()
        else:
            proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        statuses = []
        loop = asyncio.get_running_loop()
        for _ in range(8):
            started = loop.time()
            statuses.append((await me(app_client.session, url, wrong_key()))[0])
            assert loop.time() - started < 3  # a hung Redis costs at most its short timeout, once
        assert statuses == [401] * 5 + [429] * 3  # counted in memory from the outage on
        async with from_address("127.0.0.3") as other:
            assert (await me(other, url, tenant["api_key"]))[0] == 200
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL ends a stopped process too
