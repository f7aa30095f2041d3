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
from dataclasses import dataclass
from typing import Any, Literal

from control_plane.crypto import SecretBox
from control_plane.db import Database
from control_plane.db import whatsapp_config as config_db

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="


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


class TenantDirectory:
    """Two caches with the same rules: phone_number_id -> its Target (or None), and WABA id -> the
    Targets of every active tenant whose config holds it (template and account webhooks name the
    WABA, ``entry.id``; several numbers, hence tenants, may share one)."""

    def __init__(self, db: Database, box: SecretBox, *, ttl_s: float = 5.0) -> None:
        self._db = db
        self._box = box
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Target | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._wabas: dict[str, tuple[float, tuple[Target, ...]]] = {}
        self._waba_inflight: dict[str, asyncio.Future] = {}
        self._generation = 0

    def invalidate(self) -> None:
        self._cache.clear()
        self._wabas.clear()
        self._generation += 1

    def cached(self, pnid: str) -> Target | Literal[False] | None:
        """The cached answer for one id without waiting: a Target, None (no active tenant owns it), or
        False when the cache cannot say (missing or expired: use :meth:`targets`)."""
        hit = self._cache.get(pnid)
        if hit is None or hit[0] <= time.monotonic():
            return False
        return hit[1]

    async def targets(self, phone_number_ids: list[str]) -> dict[str, Target | None]:
        """pnid -> Target, or None when no active tenant owns it."""
        return await self._lookup(self._cache, self._inflight, phone_number_ids, self._load, None)

    async def waba_targets(self, waba_ids: list[str]) -> dict[str, tuple[Target, ...]]:
        """WABA id -> the Targets of the active tenants holding it (empty: none)."""
        return await self._lookup(self._wabas, self._waba_inflight, waba_ids, self._load_wabas, ())

    async def _lookup(self, cache: dict, inflight: dict, keys: list[str], load: Any, absent: Any) -> dict:
        now = time.monotonic()
        out: dict[str, Any] = {}
        waits: dict[str, asyncio.Future] = {}
        missing = []
        for key in keys:
            hit = cache.get(key)
            if hit is not None and hit[0] > now:
                out[key] = hit[1]
            elif key in inflight:
                waits[key] = inflight[key]
            else:
                missing.append(key)
        if missing:
            await self._fill(cache, inflight, missing, load)
            for key in missing:
                out[key] = cache[key][1] if key in cache else absent
        for key, fut in waits.items():
            out[key] = await asyncio.shield(fut)
        return out

    async def _fill(self, cache: dict, inflight: dict, missing: list[str], load: Any) -> None:
        """Load ``missing`` keys once (concurrent askers wait on the same futures) into ``cache``."""
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in missing}
        inflight.update(futures)
        generation = self._generation
        try:
            async with self._db.connect() as conn:
                found = await load(conn, missing)
        except BaseException as exc:
            for key, fut in futures.items():
                inflight.pop(key, None)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        if len(cache) > 50_000:  # forged ids must not grow the cache forever
            cache.clear()
        expires = time.monotonic() + self._ttl
        for key, fut in futures.items():
            inflight.pop(key, None)
            answer = found[key]
            if generation == self._generation:  # not invalidated while we were reading
                cache[key] = (expires, answer)
            fut.set_result(answer)

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
