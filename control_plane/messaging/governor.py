"""The rate governor: how fast each road may send.

- Per Cloud API number (``cloud:<phone_number_id>``): evenly spaced sends at ``cloud_rate_per_s``
  minus a small headroom (default 3 %), no bursts. Meta counts sends per number in any one-second
  window; a smooth schedule keeps every window under the limit even with a few ms of network jitter
  (a token bucket would allow capacity + rate in one window). 130429 pushes the whole number back.
  Each send also passes ``window_acquire``: an in-process guard that counts the requests answered in
  the last second plus those in flight, so the provider never sees more than the limit in any
  one-second window however late or bunched the requests arrive.
- Per (number, recipient) pair: a bucket of ``cloud_pair_burst`` messages refilling one per
  ``cloud_pair_interval_s`` (Meta: about 1 message per 6 s with short bursts). A paced message is
  not sent now: the dispatcher puts it back with the delay (order to that recipient is kept).
  131056 empties the pair's bucket.
- Per Web session (``web:<tenant_id>``): ``web_rate_per_s`` with every gap stretched by a random
  1.0-1.6x (bursts and a machine-regular rhythm get numbers banned).

The schedule is GCRA (a "theoretical arrival time" per key): ``reserve(key, n, interval)`` books n
slots in one call and returns their delays. In-process by default; with Redis (``REDIS_URL``) the
same arithmetic runs in Lua on the server's clock, so every node of a cluster shares one schedule per
number — one round trip per batch, not per message.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local first = tat - now
tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
return string.format('%.6f', first)
"""

_PENALIZE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = now + tonumber(ARGV[1])
if want > tat then tat = want end
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
return 1
"""

# KEYS: one pair key per message (repeats allowed, in order); ARGV[1] interval, ARGV[2] burst.
_PAIR_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local allow_at = tat - (burst - 1) * interval
  if allow_at <= now + 0.000001 then  -- tat is stored rounded to the microsecond
    tat = tat + interval
    redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
    out[i] = '0'
  else
    out[i] = string.format('%.6f', allow_at - now)
  end
end
return out
"""


class Governor:
    def __init__(
        self,
        *,
        cloud_rate_per_s: float = 80.0,
        web_rate_per_s: float = 1.0,
        cloud_headroom: float = 0.03,
        pair_interval_s: float = 6.0,
        pair_burst: int = 5,
        web_jitter: tuple[float, float] = (1.0, 1.6),
        redis: Any = None,
        prefix: str = "gw:gov:",
    ) -> None:
        self.cloud_rate_per_s = cloud_rate_per_s
        self.web_rate_per_s = web_rate_per_s
        self.cloud_headroom = cloud_headroom
        self.pair_interval_s = pair_interval_s
        self.pair_burst = max(1, pair_burst)
        self.web_jitter = web_jitter
        self.redis = redis
        self.prefix = prefix
        self._tat: dict[str, float] = {}
        self._pairs: dict[str, float] = {}
        self._scripts: dict[str, Any] = {}
        self._windows: dict[str, _Window] = {}

    # -- intervals -------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Any, redis: Any = None) -> Governor:
        """The limits configured for this process (CLOUD_RATE_PER_S, WEB_RATE_PER_S, ...)."""
        return cls(
            cloud_rate_per_s=settings.cloud_rate_per_s,
            web_rate_per_s=settings.web_rate_per_s,
            cloud_headroom=settings.cloud_rate_headroom,
            pair_interval_s=settings.cloud_pair_interval_s,
            pair_burst=settings.cloud_pair_burst,
            redis=redis,
        )

    def cloud_interval(self, rate: float | None = None) -> float:
        rate = rate or self.cloud_rate_per_s
        return (1.0 + self.cloud_headroom) / rate if rate > 0 else 0.0

    def web_intervals(self, n: int) -> list[float]:
        base = 1.0 / self.web_rate_per_s if self.web_rate_per_s > 0 else 0.0
        lo, hi = self.web_jitter
        return [base * random.uniform(lo, hi) for _ in range(n)]

    # -- schedule ----------------------------------------------------------------------------------

    async def reserve(self, key: str, gaps: Sequence[float]) -> list[float]:
        """Book ``len(gaps)`` consecutive slots on ``key``'s schedule (slot i+1 comes ``gaps[i]`` after
        slot i); returns each slot's delay from now, in seconds."""
        if not gaps:
            return []
        total = float(sum(gaps))
        if self.redis is not None:
            first = float(await self._script("reserve", _RESERVE_LUA)(keys=[self.prefix + key], args=[total]))
        else:
            now = time.monotonic()
            tat = max(self._tat.get(key, 0.0), now)
            first = tat - now
            self._tat[key] = tat + total
        delays, at = [], first
        for gap in gaps:
            delays.append(at)
            at += gap
        return delays

    def idle_s(self, key: str) -> float | None:
        """How long ``key``'s in-process schedule has had no booked slot (None: never booked, or
        the schedule lives in Redis). A number with work whose schedule ran dry lost that time."""
        if self.redis is not None or key not in self._tat:
            return None
        return max(0.0, time.monotonic() - self._tat[key])

    async def penalize(self, key: str, seconds: float) -> None:
        """Nothing more on ``key`` for ``seconds`` (130429, Retry-After)."""
        if self.redis is not None:
            await self._script("penalize", _PENALIZE_LUA)(keys=[self.prefix + key], args=[seconds])
            return
        want = time.monotonic() + seconds
        if want > self._tat.get(key, 0.0):
            self._tat[key] = want

    async def pair_delays(self, number_key: str, recipients: Sequence[str]) -> list[float]:
        """For each message (in order) to ``recipients[i]`` from this number: 0 = go now (a pair token is
        taken), else the seconds until the pair allows it (nothing taken)."""
        if not recipients or self.pair_interval_s <= 0:
            return [0.0] * len(recipients)
        keys = [f"{self.prefix}pair:{number_key}:{r}" for r in recipients]
        if self.redis is not None:
            out = await self._script("pair", _PAIR_LUA)(
                keys=keys, args=[self.pair_interval_s, self.pair_burst]
            )
            return [float(v) for v in out]
        now = time.monotonic()
        delays = []
        for key in keys:
            tat = max(self._pairs.get(key, 0.0), now)
            allow_at = tat - (self.pair_burst - 1) * self.pair_interval_s
            if allow_at <= now + 1e-6:  # float sums of intervals: the burst's last token is exactly now
                self._pairs[key] = tat + self.pair_interval_s
                delays.append(0.0)
            else:
                delays.append(allow_at - now)
        if len(self._pairs) > 100_000:  # forget pairs whose buckets are full again
            self._pairs = {k: v for k, v in self._pairs.items() if v > now}
        return delays

    async def penalize_pair(self, number_key: str, recipient: str, seconds: float) -> None:
        """131056: the pair's bucket is empty for at least ``seconds``."""
        key = f"{self.prefix}pair:{number_key}:{recipient}"
        full = seconds + self.pair_burst * self.pair_interval_s
        if self.redis is not None:
            await self._script("penalize", _PENALIZE_LUA)(keys=[key], args=[full])
            return
        self._pairs[key] = max(self._pairs.get(key, 0.0), time.monotonic() + full)

    async def window_acquire(
        self, key: str, limit: int, window_s: float = 1.0, margin_s: float = 0.005
    ) -> _Window:
        """Last line of defence, in-process: wait until one more request on ``key`` cannot make the
        provider see more than ``limit`` requests in any ``window_s`` window, whatever the network
        and the provider's queue did to their timing. Pair it with :meth:`window_release` once the
        answer (or the failure) is in.

        The provider stamps a request somewhere between our write (acquire) and its answer
        (release). So a new request starting now can share a window with every request answered
        less than ``window_s`` ago and with every request still in flight, and with no other: it
        goes when those number fewer than ``limit``. Unlike a log of our own send times this holds
        when the provider (or our loop) is late by more than any margin: a burst the provider
        queued counts from our first write to its last answer."""
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = _Window()
        if limit <= 0:
            win.inflight += 1
            return win
        span = window_s + margin_s
        done = win.done
        while True:
            now = time.monotonic()
            cutoff = now - span
            while done and done[0] <= cutoff:
                done.popleft()
            if len(done) + win.inflight < limit:
                win.inflight += 1
                return win
            if done:  # the oldest answer leaves the window then
                await asyncio.sleep(done[0] - cutoff)
            else:  # all ``limit`` are in flight: wait for an answer
                if win.answered is None or win.answered.done():
                    win.answered = asyncio.get_running_loop().create_future()
                await asyncio.shield(win.answered)

    @staticmethod
    def window_release(win: _Window) -> None:
        """The request :meth:`window_acquire` let go has its answer (or failed)."""
        win.inflight -= 1
        win.done.append(time.monotonic())
        if win.answered is not None and not win.answered.done():
            win.answered.set_result(None)

    def _script(self, name: str, source: str):
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(source)
        return script


class _Window:
    """One key's requests for :meth:`Governor.window_acquire`: answer times (ascending) of the
    last window, and how many are in flight."""

    __slots__ = ("answered", "done", "inflight")

    def __init__(self) -> None:
        self.done: deque[float] = deque()
        self.inflight = 0
        self.answered: asyncio.Future | None = None


async def sleep_until(loop_deadline: float) -> None:
    delay = loop_deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
