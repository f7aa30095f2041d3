"""Background pruning of the event log: events older than EVENT_RETENTION_DAYS (default 7) go.

0 keeps every event. A client asking for ``since`` older than what is kept gets what is kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from control_plane.db import events as events_db
from control_plane.db.engine import Database, utcnow

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0
PRUNE_BATCH = 10_000


async def prune_once(db: Database, retention_days: float, *, now: dt.datetime | None = None) -> int:
    """Delete events older than ``retention_days``, in batches (short locks); returns how many went."""
    if retention_days <= 0:
        return 0
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    total = 0
    while True:
        async with db.begin() as conn:
            deleted = await events_db.prune_events_before(conn, cutoff, batch=PRUNE_BATCH)
        total += deleted
        if deleted < PRUNE_BATCH:
            break
    if total:
        log.info("event log: pruned %d events older than %s", total, cutoff.isoformat())
    return total


async def prune_forever(db: Database, retention_days: float, interval_s: float = PRUNE_INTERVAL_S) -> None:
    """Prune now, then every ``interval_s``; errors are logged and retried next round."""
    while True:
        try:
            await prune_once(db, retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:  # the next round retries
            log.exception("event log pruning failed; retrying in %.0fs", interval_s)
        await asyncio.sleep(interval_s)
