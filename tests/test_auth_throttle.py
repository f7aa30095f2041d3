"""The authentication throttle's arithmetic (control_plane/auth_throttle.py) in memory and in Redis
(the Lua twin must agree step for step), the client address behind proxies (forwarded.py), and the
TRUSTED_PROXIES setting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict

from control_plane import forwarded
from control_plane.auth_throttle import AuthThrottle, Policy, address_bucket
from control_plane.config import ConfigError
from control_plane.errors import TooManyAttempts
from tests.support import FakeClock


@pytest.fixture(params=["memory", "redis"])
async def throttle(request, redis_url) -> AsyncIterator[AuthThrottle]:
    clock = FakeClock()
    if request.param == "memory":
        yield AuthThrottle(clock=clock)
        return
    client = aioredis.from_url(redis_url)
    yield AuthThrottle(redis=client, clock=clock)
    await client.aclose()


async def guess(throttle: AuthThrottle, client: str, credential: str, *, right: bool = False) -> object:
    """One attempt: "ok", "wrong", or the whole seconds it was told to wait."""
    try:
        attempt = await throttle.attempt(client, credential)
    except TooManyAttempts as exc:
        return exc.retry_after
    if right:
        await throttle.succeeded(attempt)
        return "ok"
    await throttle.failed(attempt)
    return "wrong"


def test_policy_waits_double_from_the_free_failures_up_to_the_cap():
    policy = Policy()
    assert [policy.wait_s(n) for n in range(13)] == [0] * 5 + [1, 2, 4, 8, 16, 30, 30, 30]
    assert Policy(free=0, base_s=0.5, cap_s=4).wait_s(100_000) == 4


async def test_address_bucket(throttle):
    clock = throttle.clock
    assert isinstance(clock, FakeClock)
    for i in range(5):
        assert await guess(throttle, "192.0.2.1", f"guess-{i}-aaaaaaaa") == "wrong"
    assert await guess(throttle, "192.0.2.1", "guess-5-aaaaaaaa") == 1
    assert await guess(throttle, "192.0.2.1", "the-right-one-xx", right=True) == 1  # not looked at
    assert await guess(throttle, "192.0.2.2", "guess-6-aaaaaaaa") == "wrong"  # another address
    clock.advance(0.5)
    assert await guess(throttle, "192.0.2.1", "guess-7-aaaaaaaa") == 1  # 0.5 s left: rounded up
    clock.advance(0.5)
    assert await guess(throttle, "192.0.2.1", "guess-8-aaaaaaaa") == "wrong"
    assert await guess(throttle, "192.0.2.1", "guess-9-aaaaaaaa") == 2
    clock.advance(2)
    assert await guess(throttle, "192.0.2.1", "the-right-one-xx", right=True) == "ok"
    assert [await guess(throttle, "192.0.2.1", f"again-{i}-aaaaaaa") for i in range(6)] == ["wrong"] * 5 + [1]


async def test_failures_are_forgotten_a_window_after_the_last_wait(throttle):
    clock = throttle.clock
    assert isinstance(clock, FakeClock)
    for i in range(6):
        clock.advance(1)
        assert await guess(throttle, "192.0.2.1", f"guess-{i}-aaaaaaaa") == "wrong"
    assert await guess(throttle, "192.0.2.1", "guess-x-aaaaaaaa") == 2
    clock.advance(2 + 60 + 0.001)  # the wait, then a quiet window
    assert [await guess(throttle, "192.0.2.1", f"new-{i}-aaaaaaaa") for i in range(6)] == ["wrong"] * 5 + [1]


async def test_prefix_bucket_spans_addresses_and_a_right_key_releases_its_hold(throttle):
    clock = throttle.clock
    assert isinstance(clock, FakeClock)
    key = "wgk_AbCdEf" + "z" * 33
    results = [await guess(throttle, f"198.51.100.{i}", key[:10] + f"guess{i:03d}") for i in range(7)]
    assert results == ["wrong"] * 5 + [1, 1]
    assert await guess(throttle, "198.51.100.200", "wgk_Other" + "y" * 30) == "wrong"  # other prefix
    clock.advance(1)
    attempt = await throttle.attempt("198.51.100.201", key)  # let through: holds the prefix ...
    assert await guess(throttle, "198.51.100.202", key[:10] + "guess-late") == 2
    await throttle.succeeded(attempt)  # ... until the right key releases it
    assert await guess(throttle, "198.51.100.203", key[:10] + "guess-next") == "wrong"
    assert await guess(throttle, "198.51.100.204", key[:10] + "guess-more") == 2


async def test_only_one_of_many_parallel_attempts_is_let_through_after_a_wait(throttle):
    clock = throttle.clock
    assert isinstance(clock, FakeClock)
    for i in range(5):
        await guess(throttle, "192.0.2.9", f"guess-{i}-aaaaaaaa")
    clock.advance(1)
    results = await asyncio.gather(*(guess(throttle, "192.0.2.9", f"par-{i}-aaaaaaaa") for i in range(25)))
    assert sorted(map(str, results)) == ["2"] * 24 + ["wrong"]


async def test_a_proven_client_skips_its_buckets(throttle):
    attempt = await throttle.attempt("192.0.2.7", "wgk_proven-key-123456")
    await throttle.succeeded(attempt)
    for i in range(8):
        await guess(throttle, "192.0.2.7", f"guess-{i}-aaaaaaaa")
    assert await guess(throttle, "192.0.2.7", "guess-x-aaaaaaaa") != "wrong"
    assert await guess(throttle, "192.0.2.7", "wgk_proven-key-123456", right=True) == "ok"
    assert await guess(throttle, "192.0.2.8", "wgk_proven-key-123456", right=True) == "ok"


async def test_an_unreachable_redis_means_memory():
    client = aioredis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)  # nobody there
    throttle = AuthThrottle(redis=client, clock=FakeClock(), redis_retry_s=0.0)
    try:
        results = [await guess(throttle, "192.0.2.1", f"guess-{i}-aaaaaaaa") for i in range(6)]
        assert results == ["wrong"] * 5 + [1]
        assert len(throttle.memory._buckets) == 1 + 5  # the address, each failed guess's prefix
    finally:
        await client.aclose()


def test_ipv6_clients_share_their_slash_64():
    assert (
        address_bucket("2001:db8:1:2:aaaa::1")
        == address_bucket("2001:db8:1:2:bbbb::9")
        == "2001:db8:1:2::/64"
    )
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("192.0.2.1") == "192.0.2.1"
    assert address_bucket("unknown") == "unknown"


# --- forwarded.py ------------------------------------------------------------------------------


@dataclass
class Req:
    remote: str | None
    headers: CIMultiDict = field(default_factory=CIMultiDict)
    secure: bool = False


def req(remote: str | None, *pairs: tuple[str, str], secure: bool = False) -> Req:
    return Req(remote, CIMultiDict(pairs), secure)


TRUSTED = forwarded.parse_networks("10.0.0.0/8, 127.0.0.1, ::1")
XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("request_", "client"),
    [
        (req("203.0.113.7", (XFF, "1.2.3.4")), "203.0.113.7"),  # untrusted peer: header ignored
        (req("127.0.0.1", (XFF, "1.2.3.4")), "1.2.3.4"),
        (req("127.0.0.1", (XFF, "6.6.6.6, 1.2.3.4")), "1.2.3.4"),  # the client wrote 6.6.6.6
        (req("127.0.0.1", (XFF, "6.6.6.6, 1.2.3.4, 10.0.0.5")), "1.2.3.4"),  # through two proxies
        (req("127.0.0.1", (XFF, "6.6.6.6"), (XFF, "1.2.3.4")), "1.2.3.4"),  # repeated headers
        (req("127.0.0.1", (XFF, "10.0.0.9, 10.0.0.5")), "10.0.0.9"),  # only proxies: the farthest
        (req("127.0.0.1", (XFF, "1.2.3.4, garbage")), "127.0.0.1"),  # a broken hop ends the walk
        (req("127.0.0.1", (XFF, "[2001:db8::1]:4711")), "2001:db8::1"),
        (req("127.0.0.1", (XFF, "1.2.3.4:5678")), "1.2.3.4"),
        (req("127.0.0.1"), "127.0.0.1"),
        (req("::ffff:127.0.0.1", (XFF, "1.2.3.4")), "1.2.3.4"),  # IPv4-mapped peer
        (req(None, (XFF, "1.2.3.4")), "unknown"),
    ],
)
def test_client_address(request_, client):
    assert forwarded.client_address(request_, TRUSTED) == client


def test_client_address_without_trusted_proxies_is_the_peer():
    assert forwarded.client_address(req("127.0.0.1", (XFF, "1.2.3.4")), ()) == "127.0.0.1"


@pytest.mark.parametrize(
    ("request_", "https"),
    [
        (req("203.0.113.7", secure=True), True),
        (req("203.0.113.7", ("X-Forwarded-Proto", "https")), False),  # untrusted peer
        (req("127.0.0.1", ("X-Forwarded-Proto", "https")), True),
        (req("127.0.0.1", ("X-Forwarded-Proto", "HTTPS")), True),
        (req("127.0.0.1", ("X-Forwarded-Proto", "https, http")), False),  # the nearest proxy's word
        (req("127.0.0.1", ("X-Forwarded-Proto", "http")), False),
        (req("127.0.0.1"), False),
    ],
)
def test_is_https(request_, https):
    assert forwarded.is_https(request_, TRUSTED) is https


def test_trusted_proxies_setting(make_settings):
    assert make_settings().trusted_proxies == ()
    settings = make_settings(TRUSTED_PROXIES=" 10.0.0.0/8 ,192.168.1.7,, fd00::/8 ")
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES.*'proxy\.local'"):
        make_settings(TRUSTED_PROXIES="10.0.0.1, proxy.local")
    tuned = make_settings(AUTH_FREE_FAILURES="3", AUTH_BACKOFF_CAP_S="10")
    assert (tuned.auth_free_failures, tuned.auth_backoff_cap_s) == (3, 10.0)
