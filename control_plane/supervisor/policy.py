"""Restart policy, apart from the mechanics: backoff with jitter, the crash-loop breaker, the
heartbeat watchdog and the memory cap (PSS over the bridge's whole process tree, Chromium included).

Time comes from a clock passed in (``time.monotonic`` by default), so tests drive it without sleeps.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import psutil

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIN_START_TIMEOUT_S = 15.0

Clock = Callable[[], float]  # seconds, monotonic


def backoff_delay(
    failures: int, base_s: float, cap_s: float, *, jitter: float = 0.2, rand: random.Random | None = None
) -> float:
    """Exponential backoff: ``base * 2**(failures-1)`` capped at ``cap``, minus up to ``jitter`` of it
    (so many tenants crashing together do not restart in the same instant, and the delay never
    exceeds the cap)."""
    if failures <= 0:
        return 0.0
    delay = min(cap_s, base_s * (2 ** min(failures - 1, 30)))
    return delay * (1.0 - jitter * (rand or random).random())


@dataclass
class CrashLoopBreaker:
    """``max_failures`` failures within ``window_s`` -> tripped (circus' flapping plugin). Times come
    from ``clock`` unless a call passes ``now``."""

    max_failures: int
    window_s: float
    clock: Clock = field(default=time.monotonic, repr=False)
    _times: collections.deque[float] = field(default_factory=collections.deque)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def record(self, now: float | None = None) -> int:
        """Records a failure; returns how many fall within the window."""
        now = self.clock() if now is None else now
        self._times.append(now)
        self._trim(now)
        return len(self._times)

    def recent(self, now: float | None = None) -> int:
        self._trim(self.clock() if now is None else now)
        return len(self._times)

    def tripped(self, now: float | None = None) -> bool:
        return self.max_failures > 0 and self.recent(now) >= self.max_failures

    def reset(self) -> None:
        self._times.clear()


def heartbeat_overdue(last_seen: float, interval_s: float, now: float, *, missed: float = 2.0) -> bool:
    """Silent for ``missed`` heartbeat intervals."""
    return (now - last_seen) > missed * interval_s


def start_timeout_s(heartbeat_interval_s: float) -> float:
    """How long a starting bridge may stay silent (loading the driver blocks node for a while)."""
    return max(MIN_START_TIMEOUT_S, 3 * heartbeat_interval_s)


@dataclass(frozen=True)
class WatchdogLimits:
    """The watchdog's numbers, from the settings."""

    heartbeat_interval_s: float
    start_timeout_s: float
    qr_ttl_s: float
    qr_max_cycles: int

    @classmethod
    def of(cls, settings: WatchdogSettings) -> WatchdogLimits:
        return cls(
            heartbeat_interval_s=settings.heartbeat_interval_s,
            start_timeout_s=start_timeout_s(settings.heartbeat_interval_s),
            qr_ttl_s=settings.qr_ttl_s,
            qr_max_cycles=settings.qr_max_cycles,
        )


class WatchdogSettings(Protocol):
    @property
    def heartbeat_interval_s(self) -> float: ...
    @property
    def qr_ttl_s(self) -> float: ...
    @property
    def qr_max_cycles(self) -> int: ...


# --- memory ------------------------------------------------------------------------------------


def _read_small(path: str) -> bytes:
    """One read of a small /proc file (os.open/os.read: no file object; this runs ~500 times a check)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def ppid_map() -> dict[int, int]:
    """pid -> ppid for every process, from /proc/<pid>/stat (one pass, shared by all tenants)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = _read_small(f"/proc/{name}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 2)
        if len(fields) >= 2:
            out[int(name)] = int(fields[1])
    return out


def children_index(ppids: dict[int, int]) -> dict[int, list[int]]:
    index: dict[int, list[int]] = collections.defaultdict(list)
    for pid, ppid in ppids.items():
        index[ppid].append(pid)
    return index


def process_tree(roots: Iterable[int], children: dict[int, list[int]]) -> set[int]:
    """The roots and all their descendants."""
    seen: set[int] = set()
    stack = [r for r in roots if r]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    return seen


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed RSS (cheap: /proc/<pid>/statm). RSS >= PSS, so under the limit here means under it."""
    total = 0
    for pid in pids:
        try:
            total += int(_read_small(f"/proc/{pid}/statm").split(b" ", 2)[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            continue
    return total


def pss_bytes(pids: Iterable[int]) -> int:
    """Summed PSS (shared pages split between their users), falling back to RSS where unreadable."""
    total = 0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
            total += getattr(info, "pss", None) or info.rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            total += rss_bytes([pid])
    return total


def tree_memory_bytes(roots: Iterable[int], children: dict[int, list[int]] | None = None) -> int:
    """PSS of the roots' whole trees."""
    if children is None:
        children = children_index(ppid_map())
    return pss_bytes(process_tree(roots, children))


@dataclass(frozen=True)
class MemoryVerdict:
    tenant_id: str
    bytes: int
    over: bool


def check_memory(trees: dict[str, list[int]], limit_bytes: int) -> list[MemoryVerdict]:
    """For each tenant (roots: bridge pid, browser pid), whether its tree is over the limit. Reads
    RSS first and PSS only for trees whose RSS is over the limit. Blocking: run it in a thread."""
    if not trees:
        return []
    children = children_index(ppid_map())
    verdicts = []
    for tenant_id, roots in trees.items():
        pids = process_tree(roots, children)
        used = rss_bytes(pids)
        if used > limit_bytes:
            used = pss_bytes(pids)
        verdicts.append(MemoryVerdict(tenant_id, used, used > limit_bytes))
    return verdicts
