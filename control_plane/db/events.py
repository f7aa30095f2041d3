"""The per-tenant event log: every event the CRM must not miss, with a gapless per-tenant ``seq``.

``seq`` is allocated in the database (``tenant_event_seq`` holds each tenant's last one), inside the
same transaction that inserts the events: the counter row stays locked until that transaction
commits, so seq K+1 can only be committed after seq K, on any node. A rolled-back transaction rolls
its seqs back with it, so there are no gaps.

``data`` is stored as the JSON text the clients receive; it is never re-encoded on replay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import event_log_sql as raw_sql
from control_plane.db import sql
from control_plane.db.event_log_sql import NewEvent
from control_plane.db.metadata import BigId, LongText, TenantId, Timestamp, metadata

event_log = sa.Table(
    "event_log",
    metadata,
    sa.Column("tenant_id", TenantId, primary_key=True),
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("ts", Timestamp, nullable=False, index=True),
    sa.Column("data", LongText, nullable=False),
)

tenant_event_seq = sa.Table(
    "tenant_event_seq",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("last_seq", BigId, nullable=False),
    # The token of the transaction that moved the counter last, and of the one before (see
    # ``EventLogWriter.append_predicted``); NULL for transactions that do not predict.
    sa.Column("writer", sa.BigInteger(), nullable=True),
    sa.Column("prev_writer", sa.BigInteger(), nullable=True),
)


OnLocked = Callable[["dict[str, int] | None"], None]
Row = tuple[str, int, str, dt.datetime, str]  # (tenant_id, seq, type, ts, data)


class CounterMoved(Exception):
    """A predicted append found a tenant's counter elsewhere than predicted; nothing was stored."""

    def __init__(self, tenant_ids: list[str]) -> None:
        super().__init__(f"event counters moved for {len(tenant_ids)} tenant(s); the batch was rolled back")
        self.tenant_ids = tenant_ids


def _counter_upsert(conn: AsyncConnection, counts: dict[str, int]) -> sa.Executable:
    """Move each tenant's counter by its count (created at the count); like the written-out upsert,
    the transaction's writer token is cleared (it does not predict) and the old one kept."""
    rows = [{"tenant_id": t, "last_seq": n} for t, n in sorted(counts.items())]
    c = tenant_event_seq.c
    if conn.dialect.name == "sqlite":
        lite = sqlite.insert(tenant_event_seq).values(rows)
        return lite.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"prev_writer": c.writer, "writer": None, "last_seq": c.last_seq + lite.excluded.last_seq},
        )
    ins = mysql.insert(tenant_event_seq).values(rows)
    return ins.on_duplicate_key_update(
        [("prev_writer", c.writer), ("writer", None), ("last_seq", c.last_seq + ins.inserted.last_seq)]
    )


async def allocate_seqs(conn: AsyncConnection, counts: dict[str, int]) -> dict[str, int]:
    """Reserve ``counts[tenant]`` new seqs per tenant; returns each tenant's FIRST reserved seq
    (SQLAlchemy Core: SQLite, and MariaDB inside ``sql.core_paths()``).

    The counter rows stay locked until ``conn``'s transaction ends (tenants are locked in sorted
    order, so two batches cannot deadlock on each other)."""
    await conn.execute(_counter_upsert(conn, counts))
    result = await conn.execute(
        sa.select(tenant_event_seq.c.tenant_id, tenant_event_seq.c.last_seq).where(
            tenant_event_seq.c.tenant_id.in_(sorted(counts))
        )
    )
    return {tenant_id: last - counts[tenant_id] + 1 for tenant_id, last in result}


def count_by_tenant(events: Sequence[NewEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tenant_id, *_ in events:
        counts[tenant_id] = counts.get(tenant_id, 0) + 1
    return counts


def number(events: Sequence[NewEvent], first_seq: dict[str, int]) -> list[int]:
    """Each event's seq, from its tenant's first, in input order."""
    next_seq = dict(first_seq)
    seqs = []
    for tenant_id, *_ in events:
        seq = next_seq[tenant_id]
        next_seq[tenant_id] = seq + 1
        seqs.append(seq)
    return seqs


def first_seqs(last: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """Each tenant's first seq of a batch, from its counter as the batch left it."""
    return {t: last[t] - n + 1 for t, n in counts.items()}


async def append_events(
    conn: AsyncConnection,
    events: Sequence[NewEvent],
    *,
    before: list[str] | None = None,
    before_results: list[sql.Result] | None = None,
) -> list[int]:
    """Append events (any tenants) in one multi-row insert; returns the seq of each, in input order.

    Call inside a transaction: the seqs become visible when it commits. ``before``: raw statements
    (MariaDB/MySQL) sent first in the same round trip; emptied once sent (elsewhere: must be empty);
    their results are appended to ``before_results`` when given.

    MariaDB/MySQL: ONE round trip on the driver connection, inside the caller's transaction: the
    counter upsert, the counters read into session variables, the insert computing each seq from
    them, the counters as left (see
    ``event_log_sql.one_trip``). Elsewhere (and inside ``sql.core_paths()``) SQLAlchemy Core."""
    counts = count_by_tenant(events)
    if sql.raw_mysql(conn):
        statements = raw_sql.one_trip(events, counts)
        skip = len(before or ())
        if before:
            statements, before[:] = [*before, *statements], []
        results = await sql.round_trip(conn, statements, what="event log append")
        if before_results is not None:
            before_results += results[:skip]
        (_, inserted), (last, _) = (
            results[skip + raw_sql.ONE_TRIP_INSERT],
            results[skip + raw_sql.ONE_TRIP_COUNTERS],
        )
        if inserted != len(events):  # pragma: no cover - a multi-row INSERT is all or nothing
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return number(events, first_seqs(dict(last), counts))
    if before:
        if not sql.is_mysql(conn):
            raise ValueError("raw statements before the append are for MariaDB/MySQL only")
        statements, before[:] = list(before), []
        results = await sql.round_trip(conn, statements, what="event log append")
        if before_results is not None:
            before_results += results
    seqs = number(events, await allocate_seqs(conn, counts))
    await conn.execute(
        event_log.insert(),
        [
            {"tenant_id": t, "seq": seq, "type": type_, "ts": ts, "data": data}
            for (t, type_, ts, data), seq in zip(events, seqs, strict=True)
        ],
    )
    return seqs


async def events_after(
    conn: AsyncConnection, tenant_id: str, after_seq: int, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The tenant's events with seq > ``after_seq``, oldest first, at most ``limit``.
    ``data`` is the stored JSON text."""
    result = await conn.execute(
        sa.select(event_log.c.seq, event_log.c.type, event_log.c.ts, event_log.c.data)
        .where(event_log.c.tenant_id == tenant_id, event_log.c.seq > after_seq)
        .order_by(event_log.c.seq)
        .limit(limit)
    )
    return [
        {"tenant_id": tenant_id, "seq": seq, "type": type_, "ts": ts, "data": data}
        for seq, type_, ts, data in result
    ]


async def last_seq(conn: AsyncConnection, tenant_id: str) -> int:
    """The tenant's latest allocated seq (0 before its first event)."""
    result = await conn.execute(
        sa.select(tenant_event_seq.c.last_seq).where(tenant_event_seq.c.tenant_id == tenant_id)
    )
    return result.scalar() or 0


async def prune_events_before(conn: AsyncConnection, cutoff: dt.datetime, *, batch: int = 10_000) -> int:
    """Delete up to ``batch`` events (every tenant) older than ``cutoff``; returns how many went.

    Counters are kept, so seqs are never reused after pruning."""
    stmt = event_log.delete().where(event_log.c.ts < cutoff)
    if conn.dialect.name in ("mysql", "mariadb"):
        stmt = stmt.with_dialect_options(mysql_limit=batch)
    result = await conn.execute(stmt)
    return result.rowcount


# The group-commit writer (its own module; it needs the functions above, so it comes last).
from control_plane.db.event_writer import EventLogWriter  # noqa: E402

__all__ = [
    "CounterMoved",
    "EventLogWriter",
    "NewEvent",
    "OnLocked",
    "allocate_seqs",
    "append_events",
    "event_log",
    "events_after",
    "last_seq",
    "prune_events_before",
    "tenant_event_seq",
]
