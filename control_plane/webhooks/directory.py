"""Which tenant owns a phone_number_id, and with which app secret its deliveries are signed.

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
    def __init__(self, db: Database, box: SecretBox, *, ttl_s: float = 5.0) -> None:
        self._db = db
        self._box = box
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Target | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._generation = 0

    def invalidate(self) -> None:
        self._cache.clear()
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
        now = time.monotonic()
        out: dict[str, Target | None] = {}
        waits: dict[str, asyncio.Future] = {}
        missing = []
        for pnid in phone_number_ids:
            hit = self._cache.get(pnid)
            if hit is not None and hit[0] > now:
                out[pnid] = hit[1]
            elif pnid in self._inflight:
                waits[pnid] = self._inflight[pnid]
            else:
                missing.append(pnid)
        if missing:
            await self._load(missing)
            for pnid in missing:
                out[pnid] = self._cache[pnid][1] if pnid in self._cache else None
        for pnid, fut in waits.items():
            out[pnid] = await asyncio.shield(fut)
        return out

    async def _load(self, missing: list[str]) -> None:
        loop = asyncio.get_running_loop()
        futures = {pnid: loop.create_future() for pnid in missing}
        self._inflight.update(futures)
        generation = self._generation
        try:
            async with self._db.connect() as conn:
                rows = await config_db.find_webhook_targets(conn, missing)
        except BaseException as exc:
            for pnid, fut in futures.items():
                self._inflight.pop(pnid, None)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        found = {row["phone_number_id"]: self._target(row) for row in rows}
        if len(self._cache) > 50_000:  # forged pnids must not grow the cache forever
            self._cache.clear()
        expires = time.monotonic() + self._ttl
        for pnid, fut in futures.items():
            self._inflight.pop(pnid, None)
            target = found.get(pnid)
            if generation == self._generation:  # not invalidated while we were reading
                self._cache[pnid] = (expires, target)
            fut.set_result(target)

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
