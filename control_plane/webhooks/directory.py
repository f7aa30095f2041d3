"""Which tenant owns a phone_number_id (or a WABA id), and with which app secret its deliveries are
signed.

Cached in memory for a few seconds (a webhook burst must not cost a query per request); concurrent
misses share one query (no stampede when an entry expires under load). Saving a tenant's WhatsApp
config invalidates the cache of this process, other nodes catch up within the TTL.
Secrets are kept decrypted only here, as bytes, never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from control_plane.crypto import SecretBox
from control_plane.db import Database
from control_plane.db import whatsapp_config as config_db

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
# Ids per lookup query. Meta's deliveries name far fewer; a forged one may name up to
# WEBHOOK_MAX_ROUTING_IDS, and preparing a query costs a few µs an id on the event loop: in slices, the
# loop serves other requests between them (a few ms each, never tens).
LOOKUP_CHUNK = 1_000
# No config holds a longer id (the columns' width): longer ones are unknown without a query.
MAX_ID_LENGTH = 64


@dataclass(frozen=True)
class Target:
    """A phone_number_id's tenant (only active configs of active tenants are targets)."""

    tenant_id: str
    phone_number_id: str
    waba_id: str | None
    app_secret: bytes | None = None  # None: configured without an app secret -> cannot verify


def parse_signature(header: str | None) -> bytes | None:
    """``sha256=<64 hex>`` -> the 32 digest bytes; None when missing or malformed."""
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith(SIGNATURE_PREFIX):
        return None
    try:
        digest = bytes.fromhex(header[len(SIGNATURE_PREFIX) :])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def signature_matches(body: bytes, digest: bytes, secret: bytes | None) -> bool:
    """HMAC-SHA256 of the RAW body with ``secret``, compared in constant time."""
    if not secret:
        return False
    return hmac.compare_digest(hmac.digest(secret, body, "sha256"), digest)  # OpenSSL's one-shot HMAC


class _Answers:
    """One id space's cached answers, each with its expiry. Negative answers (no active tenant) live
    in a bounded FIFO of their own: ids anyone can forge never push out the real ones, and never grow
    the cache past ``max_absent`` (the oldest go first; they would expire first anyway)."""

    def __init__(self, max_absent: int) -> None:
        self.found: dict[str, tuple[float, Any]] = {}
        self.absent: dict[str, float] = {}
        self.max_absent = max_absent

    def get(self, key: str, now: float, absent: Any) -> Any:
        """The answer, ``absent`` for a cached negative, or ``_MISS``."""
        hit = self.found.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        expires = self.absent.get(key)
        if expires is not None and expires > now:
            return absent
        return _MISS

    def put(self, key: str, answer: Any, expires: float) -> None:
        if answer:
            self.found[key] = (expires, answer)
            self.absent.pop(key, None)
            return
        self.found.pop(key, None)
        self.absent.pop(key, None)  # re-inserted last: the FIFO stays in expiry order
        while len(self.absent) >= self.max_absent:
            del self.absent[next(iter(self.absent))]
        self.absent[key] = expires

    def clear(self) -> None:
        self.found.clear()
        self.absent.clear()


_MISS: Any = object()


@dataclass(slots=True)
class Resolved:
    """A delivery's routing ids, answered: phone_number_id -> Target or None, WABA id -> Targets."""

    numbers: dict[str, Target | None]
    wabas: dict[str, tuple[Target, ...]]

    def app_secrets(self) -> dict[str, bytes | None]:
        """Every tenant named, with the app secret its deliveries must be signed with."""
        out = {t.tenant_id: t.app_secret for t in self.numbers.values() if t is not None}
        for targets in self.wabas.values():
            out.update((t.tenant_id, t.app_secret) for t in targets)
        return out

    def unknown(self) -> tuple[list[str], list[str]]:
        """(the phone_number_ids, the WABA ids) no active tenant owns."""
        return [k for k, t in self.numbers.items() if t is None], [k for k, t in self.wabas.items() if not t]


class UnknownLog:
    """The log about ids no active tenant owns: ONE line per delivery whatever it names (a few ids as
    examples and the counts), and at most one line every ``interval_s``: deliveries in between are
    counted into the next line. A flood of forged ids writes about one line a second."""

    EXAMPLES = 3

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._next_at = 0.0
        self._held_deliveries = 0
        self._held_ids = 0

    def note(self, numbers: list[str], wabas: list[str]) -> None:
        if not numbers and not wabas:
            return
        now = self._clock()
        if now < self._next_at:
            self._held_deliveries += 1
            self._held_ids += len(numbers) + len(wabas)
            return
        self._next_at = now + self._interval
        held = ""
        if self._held_deliveries:
            held = (
                f"; and {self._held_deliveries} deliveries since the last line"
                f" naming {self._held_ids} unknown ids"
            )
            self._held_deliveries = self._held_ids = 0
        log.warning(
            "webhook for unknown phone_number_id x%d [%s] and unknown waba_id x%d [%s]: not stored%s",
            len(numbers),
            _examples(numbers, self.EXAMPLES),
            len(wabas),
            _examples(wabas, self.EXAMPLES),
            held,
        )


def _examples(ids: list[str], count: int) -> str:
    shown = ",".join(i[:32] for i in ids[:count])
    return f"{shown},..." if len(ids) > count else shown


class TenantDirectory:
    """Two caches with the same rules: phone_number_id -> its Target (or None), and WABA id -> the
    Targets of every active tenant whose config holds it (template and account webhooks name the
    WABA, ``entry.id``; several numbers, hence tenants, may share one). Misses are loaded in ONE query
    per delivery; ids no active tenant owns are cached too (negatively: ``max_absent`` per cache)."""

    def __init__(self, db: Database, box: SecretBox, *, ttl_s: float = 5.0, max_absent: int = 20_000) -> None:
        self._db = db
        self._box = box
        self._ttl = ttl_s
        self._cache = _Answers(max_absent)
        self._inflight: dict[str, asyncio.Future] = {}
        self._wabas = _Answers(max_absent)
        self._waba_inflight: dict[str, asyncio.Future] = {}
        self._generation = 0

    def invalidate(self) -> None:
        self._cache.clear()
        self._wabas.clear()
        self._generation += 1

    def cached(self, pnid: str) -> Target | Literal[False] | None:
        """The cached answer for one id without waiting: a Target, None (no active tenant owns it), or
        False when the cache cannot say (missing or expired: use :meth:`targets`)."""
        hit = self._cache.get(pnid, time.monotonic(), None)
        return False if hit is _MISS else hit

    async def resolve(self, numbers: tuple[str, ...], wabas: tuple[str, ...]) -> Resolved:
        """Every id answered, from the cache without waiting when it can (the hot path)."""
        now = time.monotonic()
        found: dict[str, Target | None] = {}
        missing = []
        for pnid in numbers:
            hit = self._cache.get(pnid, now, None)
            if hit is _MISS:
                missing.append(pnid)
            else:
                found[pnid] = hit
        if missing:
            found.update(await self.targets(missing))
        return Resolved(found, await self.waba_targets(list(wabas)) if wabas else {})

    async def targets(self, phone_number_ids: list[str]) -> dict[str, Target | None]:
        """pnid -> Target, or None when no active tenant owns it."""
        return await self._lookup(self._cache, self._inflight, phone_number_ids, self._load, None)

    async def waba_targets(self, waba_ids: list[str]) -> dict[str, tuple[Target, ...]]:
        """WABA id -> the Targets of the active tenants holding it (empty: none)."""
        return await self._lookup(self._wabas, self._waba_inflight, waba_ids, self._load_wabas, ())

    async def _lookup(self, cache: _Answers, inflight: dict, keys: list[str], load: Any, absent: Any) -> dict:
        now = time.monotonic()
        out: dict[str, Any] = {}
        waits: dict[str, asyncio.Future] = {}
        missing = []
        for key in keys:
            hit = cache.get(key, now, absent)
            if hit is not _MISS:
                out[key] = hit
            elif key in inflight:
                waits[key] = inflight[key]
            elif len(key) > MAX_ID_LENGTH:  # no config holds it: not worth a query, nor a cache entry
                out[key] = absent
            else:
                missing.append(key)
        if missing:
            out.update(await self._fill(cache, inflight, missing, load))
        for key, fut in waits.items():
            out[key] = (await asyncio.shield(fut))[key]
        return out

    async def _fill(self, cache: _Answers, inflight: dict, missing: list[str], load: Any) -> dict:
        """Load ``missing`` keys into ``cache``, in one query per ``LOOKUP_CHUNK`` keys (one for
        anything Meta sends); concurrent askers for any of them wait on the same future (one per
        call, its result every answer)."""
        batch = asyncio.get_running_loop().create_future()
        for key in missing:
            inflight[key] = batch
        generation = self._generation
        try:
            async with self._db.connect() as conn:
                found = {}
                for start in range(0, len(missing), LOOKUP_CHUNK):
                    found.update(await load(conn, missing[start : start + LOOKUP_CHUNK]))
        except BaseException as exc:
            batch.set_exception(exc)
            batch.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            for key in missing:
                if inflight.get(key) is batch:
                    del inflight[key]
        if generation == self._generation:  # not invalidated while we were reading
            expires = time.monotonic() + self._ttl
            for key in missing:
                cache.put(key, found[key], expires)
        batch.set_result(found)
        return found

    async def _load(self, conn: Any, missing: list[str]) -> dict[str, Target | None]:
        rows = await config_db.find_webhook_targets(conn, missing)
        found = {row["phone_number_id"]: self._target(row) for row in rows}
        return {pnid: found.get(pnid) for pnid in missing}

    async def _load_wabas(self, conn: Any, missing: list[str]) -> dict[str, tuple[Target, ...]]:
        found: dict[str, list[Target]] = {waba: [] for waba in missing}
        for row in await config_db.find_waba_targets(conn, missing):
            target = self._target(row)
            if target is not None:
                found[row["waba_id"]].append(target)
        return {waba: tuple(targets) for waba, targets in found.items()}

    def _target(self, row: dict[str, Any]) -> Target | None:
        if not row["active"]:
            return None
        secret = None
        if row["app_secret_enc"]:
            try:
                secret = self._box.decrypt(row["app_secret_enc"]).encode()
            except ValueError:
                log.error(
                    "webhook app secret cannot be decrypted (SECRET_KEY changed?) tenant=%s", row["tenant_id"]
                )
        return Target(
            tenant_id=row["tenant_id"],
            phone_number_id=row["phone_number_id"],
            waba_id=row["waba_id"],
            app_secret=secret,
        )
