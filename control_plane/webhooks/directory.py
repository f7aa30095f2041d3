"""Which tenant owns a phone_number_id, and with which app secret its deliveries are signed.

Cached in memory for a few seconds (a webhook burst must not cost a query per request); saving a
tenant's WhatsApp config invalidates the cache of this process, other nodes catch up within the TTL.
Secrets are kept decrypted only here, as bytes, never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

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
        digest = bytes.fromhex(header[len(SIGNATURE_PREFIX):])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def signature_matches(body: bytes, digest: bytes, secret: bytes | None) -> bool:
    """HMAC-SHA256 of the RAW body with ``secret``, compared in constant time."""
    if not secret:
        return False
    return hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), digest)


class TenantDirectory:
    def __init__(self, db: Database, box: SecretBox, *, ttl_s: float = 5.0) -> None:
        self._db = db
        self._box = box
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Target | None]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    async def targets(self, phone_number_ids: list[str]) -> dict[str, Target | None]:
        """pnid -> Target, or None when no active tenant owns it."""
        now = time.monotonic()
        out: dict[str, Target | None] = {}
        missing = []
        for pnid in phone_number_ids:
            hit = self._cache.get(pnid)
            if hit is not None and hit[0] > now:
                out[pnid] = hit[1]
            else:
                missing.append(pnid)
        if missing:
            async with self._db.connect() as conn:
                rows = await config_db.find_webhook_targets(conn, missing)
            found = {row["phone_number_id"]: self._target(row) for row in rows}
            if len(self._cache) > 50_000:  # forged pnids must not grow the cache forever
                self._cache.clear()
            for pnid in missing:
                target = found.get(pnid)
                self._cache[pnid] = (now + self._ttl, target)
                out[pnid] = target
        return out

    def _target(self, row: dict[str, Any]) -> Target | None:
        if not row["active"]:
            return None
        secret = None
        if row["app_secret_enc"]:
            try:
                secret = self._box.decrypt(row["app_secret_enc"]).encode()
            except ValueError:
                log.error("webhook app secret cannot be decrypted (SECRET_KEY changed?) tenant=%s",
                          row["tenant_id"])
        return Target(tenant_id=row["tenant_id"], phone_number_id=row["phone_number_id"],
                      waba_id=row["waba_id"], app_secret=secret)
