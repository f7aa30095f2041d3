"""A delivery's JSON and routing ids (``webhooks/prescan.py``) before its signature is checked, with
no unbounded work on the event loop.

Meta's deliveries are small (a few KB): they are parsed where they arrive, which costs microseconds.
A body larger than ``inline_max_bytes`` (``WEBHOOK_INLINE_DECODE_BYTES``, 32 KiB) is read in a worker
process instead: up to ``WEBHOOK_MAX_BODY_BYTES`` of forged JSON (a million small objects, arrays
nested just under the depth limit) costs a parse of 0.1-2 s on a busy machine, which would stop every
other request meanwhile. The worker answers only the routing ids; the route parses the body again
on the loop once its signature holds (then it is Meta's, or its app secret has leaked).

One worker, started on the first large body (most processes never see one) and stopped with the app,
at a lower CPU priority than the app (``WORKER_NICE``); at most ``max_pending`` bodies wait for it,
past that 503 ``busy`` (Meta redelivers later). A worker that dies is replaced on the next large body
(the body that saw it die: 503).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from control_plane import errors, text_repair
from control_plane.http.parsing import parse_json
from control_plane.webhooks import prescan

log = logging.getLogger(__name__)


# The worker's CPU priority below the app's (nice 0): on a small machine the forged bodies it reads
# must not take CPU from the event loop, the database or the requests that matter.
WORKER_NICE = 10


def _init_worker() -> None:
    """Ctrl-C stops the app, which stops its worker (no traceback there); a lower priority."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(WORKER_NICE)


def _spawn_worker() -> ProcessPoolExecutor:
    """The pool and its process (started by the first submit: here, in a thread, since starting a
    process blocks for tens of milliseconds). spawn: a fresh interpreter, nothing of this process's
    threads or sockets (fork is unsafe in a threaded process); it imports the program's main module,
    which must therefore be import-safe (``if __name__ == "__main__"``, as ``control_plane.__main__``)."""
    pool = ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )
    pool.submit(int)
    return pool


def _repaired_ids(ids: prescan.RoutingIds) -> prescan.RoutingIds:
    """Ids that are no Unicode text, repaired as the full parse repairs them (they look no tenant up)."""

    def fixed(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(text_repair.repaired(v) or v for v in values))

    return prescan.RoutingIds(fixed(ids.numbers), fixed(ids.wabas))


class DeliveryDecoder:
    def __init__(self, *, max_ids: int, inline_max_bytes: int, max_pending: int = 4) -> None:
        self.max_ids = max_ids
        self.inline_max_bytes = inline_max_bytes
        self.max_pending = max_pending
        self._pool: ProcessPoolExecutor | None = None
        self._pending = 0
        self._starting = asyncio.Lock()
        self.offloaded = 0  # bodies read by the worker (tests, metrics)

    async def decode(self, raw: bytes) -> tuple[Any, prescan.RoutingIds]:
        """(the parsed JSON, or None when the worker read it; the routing ids). 400 when the body is
        not a delivery, 413 ``too_many_ids``, 503 ``busy`` when the worker is behind."""
        if len(raw) <= self.inline_max_bytes:
            data = self.parse(raw)
            return data, prescan.routing_ids(data, self.max_ids)
        ids = prescan.scan_result(await self._in_worker(raw))
        if not all(map(str.isascii, (*ids.numbers, *ids.wabas))):  # the ids, not the body, are checked
            ids = _repaired_ids(ids)
        return None, ids

    @staticmethod
    def parse(raw: bytes) -> Any:
        """The whole delivery, its lone surrogates repaired and its messages flagged
        (``control_plane/text_repair.py``: a delivery is never refused for its text)."""
        data = parse_json(raw)
        if text_repair.may_have_lone_surrogates(raw):
            repairs = text_repair.repair_delivery(data)
            if repairs:
                log.warning("webhook delivery with text that is no Unicode: %d strings repaired", repairs)
        return data

    async def _in_worker(self, raw: bytes) -> prescan.ScanResult:
        if self._pending >= self.max_pending:
            raise errors.Unavailable("too many large webhook deliveries at once; retry later", code="busy")
        self._pending += 1
        self.offloaded += 1
        try:
            pool = self._pool or await self._start()
            return await asyncio.wrap_future(pool.submit(prescan.scan_raw, raw, self.max_ids))
        except BrokenProcessPool:
            log.error("webhook decoder worker died; a new one starts with the next large delivery")
            self._discard()
            raise errors.Unavailable("webhook decoder restarting; retry later", code="busy") from None
        finally:
            self._pending -= 1

    async def _start(self) -> ProcessPoolExecutor:
        async with self._starting:  # one start for the bodies that arrive meanwhile
            if self._pool is None:
                self._pool = await asyncio.to_thread(_spawn_worker)
            return self._pool

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the worker (waits for it off the loop)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
