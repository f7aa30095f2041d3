"""Authentication throttling: guessing credentials gets slower with every wrong guess.

Every attempt that presents a credential (a bearer token on ``/api``, a Socket.IO ``auth.token``, the
admin panel's login form) counts in two buckets:

- its client's address (``forwarded.client_address``; an IPv6 client by its /64, which one host
  usually holds whole);
- the credential's prefix (its first 10 characters, what the API shows of a key), so a botnet
  guessing at one tenant's key from many addresses is slowed down as one client.

Per bucket the first ``free`` failures cost nothing; after the n-th failure the next attempt must
wait ``base_s * 2 ** (n - free)`` seconds, at most ``cap_s`` (defaults 5, 1 s, 30 s: 1, 2, 4, 8, 16,
30, 30 ...). A bucket's failures are forgotten ``window_s`` (60 s) after its last wait ended. While
either bucket waits, the attempt is refused WITHOUT looking at the credential
(:class:`~control_plane.errors.TooManyAttempts`: 429 ``too_many_attempts`` with ``Retry-After``), so
a right guess cannot be told from a wrong one meanwhile. The one attempt let through after a wait
holds its buckets (for the wait its failure would set) until it is answered, so parallel guessers do
not all slip through together. A right credential clears its address's failures and releases the
prefix's hold: after the current short wait the right token always gets in.

An address that proved a credential (that very token) in the last ``PROOF_TTL_S`` is not held up by
that token's buckets: a NAT neighbour, or a botnet guessing at the same prefix, cannot lock out a
client that is working, and established clients cost no round trip.

State: with Redis (``REDIS_URL``) one Lua script, one round trip per attempt, shared by every node;
otherwise this process's memory. A Redis error, or an answer slower than ``redis_timeout_s``, falls
back to memory for ``redis_retry_s``: Redis being down never fails a request. Times come from the
caller's wall clock (``clock``, injectable for tests), so nodes agree to NTP precision.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.crypto import key_prefix
from control_plane.errors import TooManyAttempts

log = logging.getLogger(__name__)

KEY_PREFIX = "gw:auth:"  # gw:auth:a:<address bucket>, gw:auth:p:<digest of a credential prefix>
PROOF_TTL_S = 600.0
MAX_PROOFS = 10_000
MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Policy:
    free: int = 5
    base_s: float = 1.0
    cap_s: float = 30.0
    window_s: float = 60.0

    def wait_s(self, failures: int) -> float:
        """How long the attempt after the ``failures``-th failure waits."""
        if failures < self.free:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - self.free, 64))


@dataclass(frozen=True)
class Attempt:
    """One admitted attempt; report its outcome with :meth:`AuthThrottle.failed` / ``succeeded``."""

    client: str
    prefix: str  # the credential's first characters
    proof: tuple[str, str]  # (client, digest of the credential)
    proven: bool  # this client proved this credential lately: the buckets were not consulted

    @property
    def keys(self) -> tuple[str, str]:
        """The buckets: the client's address, the credential's prefix."""
        return (f"{KEY_PREFIX}a:{address_bucket(self.client)}", f"{KEY_PREFIX}p:{_digest(self.prefix)[:32]}")


class _Bucket:
    __slots__ = ("failures", "hold", "last")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0
        self.hold = 0.0

    def current(self, now: float, policy: Policy) -> int:
        """The failures still counted (forgotten ``window_s`` after the last wait ended)."""
        if self.failures and now > self.last + policy.wait_s(self.failures) + policy.window_s:
            self.failures = 0
        return self.failures

    def until(self, now: float, policy: Policy) -> float:
        failures = self.current(now, policy)
        waits_until = self.last + policy.wait_s(failures) if failures >= policy.free else 0.0
        return max(waits_until, self.hold)


class MemoryStore:
    """The buckets in this process (LRU-bounded); :data:`_LUA` is its Redis twin, step for step."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def run(self, op: str, keys: Sequence[str], now: float, policy: Policy) -> float:
        if op == "admit":
            return self._admit(keys, now, policy)
        if op == "fail":
            return self._fail(keys, now, policy)
        self._buckets.pop(keys[0], None)  # succeed: the address starts afresh
        bucket = self._buckets.get(keys[1])
        if bucket is not None:
            bucket.hold = 0.0
        return 0.0

    def _admit(self, keys: Sequence[str], now: float, policy: Policy) -> float:
        buckets = [b for b in map(self._buckets.get, keys) if b is not None]
        until = max((b.until(now, policy) for b in buckets), default=0.0)
        if until > now:
            return until - now
        for bucket in buckets:
            if bucket.current(now, policy) >= policy.free:
                bucket.hold = now + policy.wait_s(bucket.failures + 1)
        return 0.0

    def _fail(self, keys: Sequence[str], now: float, policy: Policy) -> float:
        wait = 0.0
        for key in keys:
            bucket = self._buckets.pop(key, None) or _Bucket()
            bucket.failures = bucket.current(now, policy) + 1
            bucket.last, bucket.hold = now, 0.0
            self._buckets[key] = bucket  # most recent last: the stalest are evicted first
            wait = max(wait, policy.wait_s(bucket.failures))
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait


# KEYS: address bucket, credential bucket. ARGV: op, now_ms, free, base_ms, cap_ms, window_ms.
# Returns milliseconds: admit -> the wait (0: go), fail -> the wait it set, succeed -> 0.
_LUA = """
local op, now = ARGV[1], tonumber(ARGV[2])
local free, base, cap, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl = cap + window + 1000
local function wait(n)
  if n < free then return 0 end
  return math.min(cap, base * 2 ^ math.min(n - free, 64))
end
local function load(key)
  local v = redis.call('HMGET', key, 'n', 'last', 'hold')
  local n, last = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if n > 0 and now > last + wait(n) + window then n = 0 end
  return n, last, tonumber(v[3]) or 0
end
if op == 'admit' then
  local till = 0
  for _, key in ipairs(KEYS) do
    local n, last, hold = load(key)
    if n >= free and last + wait(n) > till then till = last + wait(n) end
    if hold > till then till = hold end
  end
  if till > now then return math.ceil(till - now) end
  for _, key in ipairs(KEYS) do
    local n = load(key)
    if n >= free then
      redis.call('HSET', key, 'hold', now + wait(n + 1))
      redis.call('PEXPIRE', key, ttl)
    end
  end
  return 0
elseif op == 'fail' then
  local most = 0
  for _, key in ipairs(KEYS) do
    local n = load(key) + 1
    redis.call('HSET', key, 'n', n, 'last', now, 'hold', 0)
    redis.call('PEXPIRE', key, ttl)
    if wait(n) > most then most = wait(n) end
  end
  return math.ceil(most)
end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'hold', 0) end
return 0
"""


def address_bucket(client: str) -> str:
    """An IPv4 client by its address, an IPv6 one by its /64."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return client


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class AuthThrottle:
    """See the module docstring. ``redis``: a ``redis.asyncio`` client, or None (memory only)."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        redis: Any = None,
        clock: Callable[[], float] = time.time,
        redis_timeout_s: float = 0.5,
        redis_retry_s: float = 5.0,
    ) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self.memory = MemoryStore()
        self.redis_timeout_s = redis_timeout_s
        self.redis_retry_s = redis_retry_s
        self._script = redis.register_script(_LUA) if redis is not None else None
        self._redis_down_until = 0.0  # time.monotonic(): memory only until then
        self._proofs: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def attempt(self, client: str, credential: str) -> Attempt:
        """Admit an attempt by ``client`` with ``credential``, or raise :class:`TooManyAttempts`."""
        proof = (client, _digest(credential))
        now = self.clock()
        attempt = Attempt(client, key_prefix(credential), proof, proven=self._proofs.get(proof, 0.0) > now)
        if attempt.proven:
            return attempt
        wait = await self._run("admit", attempt.keys, now)
        if wait > 0:
            raise TooManyAttempts(wait)
        return attempt

    async def failed(self, attempt: Attempt) -> None:
        self._proofs.pop(attempt.proof, None)
        wait = await self._run("fail", attempt.keys, self.clock())
        if wait > 0:
            log.warning(
                "authentication failed from %s; next attempt (address or key prefix) in %.0fs",
                attempt.client,
                wait,
            )

    async def succeeded(self, attempt: Attempt) -> None:
        if attempt.proven:
            return  # proved within PROOF_TTL_S: nothing to clear, and no round trip
        now = self.clock()
        self._proofs.pop(attempt.proof, None)
        self._proofs[attempt.proof] = now + PROOF_TTL_S
        while len(self._proofs) > MAX_PROOFS:
            self._proofs.popitem(last=False)
        await self._run("succeed", attempt.keys, now)

    async def _run(self, op: str, keys: tuple[str, str], now: float) -> float:
        """Seconds (the wait for ``admit`` / ``fail``): in Redis while it answers, else in memory."""
        if self._script is not None and time.monotonic() >= self._redis_down_until:
            policy = self.policy
            args = [op, int(now * 1000), policy.free]
            args += [round(s * 1000) for s in (policy.base_s, policy.cap_s, policy.window_s)]
            try:
                async with asyncio.timeout(self.redis_timeout_s):
                    return int(await self._script(keys=list(keys), args=args)) / 1000
            except Exception as exc:
                self._redis_down_until = time.monotonic() + self.redis_retry_s
                log.warning(
                    "auth throttle: Redis failed (%s: %s); this process's memory for %.0fs",
                    type(exc).__name__,
                    exc,
                    self.redis_retry_s,
                )
        return self.memory.run(op, keys, now, self.policy)
