"""Login throttling: a client that keeps guessing the admin token is turned away for a while.

Per remote address, failures are remembered for ``window_s``; once ``max_failures`` of them fall in
the window, every further attempt from that address (right or wrong) is refused with 429 until the
oldest failure leaves the window. A successful login forgets the address's failures. State is
in-memory and per process: it slows guessing down, it is not an account lock-out. Behind a reverse
proxy ``request.remote`` is the proxy unless aiohttp is told about forwarded headers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float:
        """Seconds this client must wait before trying again; 0 when it may try now."""
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        now = self._clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        if len(failures) < self.max_failures:
            return 0.0
        return failures[0] + self.window_s - now

    def failed(self, client: str) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        failures.append(self._clock())
        self._failures[client] = failures  # most recent last: the oldest are evicted first
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
