"""The per-tenant event log: every event the CRM must not miss, with a gapless per-tenant ``seq``.

``seq`` is allocated in the database (``tenant_event_seq`` holds each tenant's last one), inside the
same transaction that inserts the events: the counter row stays locked until that transaction
commits, so seq K+1 can only be committed after seq K, on any node. A rolled-back transaction rolls
its seqs back with it, so there are no gaps.

``data`` is stored as the JSON text the clients receive; it is never re-encoded on replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pymysql.err as _pymysql_errors
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata

event_log = sa.Table(
    "event_log",
    metadata,
    sa.Column("tenant_id", TenantId, primary_key=True),
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("ts", Timestamp, nullable=False, index=True),
    sa.Column("data", LongText, nullable=False),
)

tenant_event_seq = sa.Table(
    "tenant_event_seq",
    metadata,
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    # The token of the transaction that moved the counter last, and of the one before (see
    # ``EventLogWriter.append_predicted``); NULL for transactions that do not predict.
    sa.Column("writer", sa.BigInteger(), nullable=True),
    sa.Column("prev_writer", sa.BigInteger(), nullable=True),
)

# One row to insert: (tenant_id, type, ts, data_json). Seqs are assigned in input order per tenant.
OnLocked = Callable[["dict[str, int] | None"], None]
_OUT_OF_RANGE = 1690  # "BIGINT value is out of range": append_predicted's check failed


class CounterMoved(Exception):
    """A predicted append found a tenant's counter elsewhere than predicted; nothing was stored."""

    def __init__(self, tenant_ids: list[str]) -> None:
        super().__init__(f"event counters moved for {len(tenant_ids)} tenant(s); the batch was rolled back")
        self.tenant_ids = tenant_ids


NewEvent = tuple[str, str, dt.datetime, str]
Row = tuple[str, int, str, dt.datetime, str]  # (tenant_id, seq, type, ts, data)


def _sqlite_upsert_counters(counts: dict[str, int]) -> sa.Executable:
    rows = [{"tenant_id": t, "last_seq": n} for t, n in sorted(counts.items())]
    ins = sqlite.insert(tenant_event_seq).values(rows)
    return ins.on_conflict_do_update(
        index_elements=["tenant_id"], set_={"last_seq": tenant_event_seq.c.last_seq + ins.excluded.last_seq}
    )


# The hot path on MariaDB: statements written once and sent through the driver. SQLAlchemy's
# multi-VALUES construct compiles afresh for every batch size and costs more CPU than the insert;
# aiomysql turns an executemany of ``INSERT ... VALUES (%s, ...)`` into ONE multi-row statement.
_COUNTER_MOVE = (
    "ON DUPLICATE KEY UPDATE prev_writer = writer, writer = VALUES(writer), "
    "last_seq = last_seq + VALUES(last_seq)"
)  # SET goes left to right: prev_writer first
_MYSQL_UPSERT = "INSERT INTO tenant_event_seq (tenant_id, last_seq) VALUES (%s, %s) " + _COUNTER_MOVE
_MARIADB_UPSERT_RETURNING = (
    "INSERT INTO tenant_event_seq (tenant_id, last_seq) VALUES {} " + _COUNTER_MOVE + " "
    "RETURNING tenant_id, last_seq"
)
_MYSQL_SELECT = "SELECT tenant_id, last_seq FROM tenant_event_seq WHERE tenant_id IN ({})"
_MYSQL_INSERT = "INSERT INTO event_log (tenant_id, seq, type, ts, data) VALUES "
_MYSQL_ROW = "(X'%s',%d,X'%s','%s',X'%s')"  # hex literals: no escaping to get wrong, whatever sql_mode


def _mysql_insert_sql(rows: list[Row]) -> str:
    """The multi-row INSERT with its values inlined: ~2 us per row, against ~30 us for the
    driver's per-parameter escaping (the event log's hot path)."""
    return _MYSQL_INSERT + ",".join(
        _MYSQL_ROW
        % (
            tenant_id.encode().hex(),
            seq,
            type_.encode().hex(),
            ts.isoformat(sep=" ", timespec="microseconds"),
            data.encode().hex(),
        )
        for tenant_id, seq, type_, ts, data in rows
    )


_SAFE_NAME = re.compile(r"^[0-9A-Za-z_.:-]{1,64}$")
_ROW_SELECT = "SELECT '%s',%d,'%s','%s',X'%s'"
_FIRST_ROW_SELECT = "SELECT '%s' AS t,%d AS b,'%s' AS ty,'%s' AS ts,X'%s' AS d"


def _one_trip_sql(events: Sequence[NewEvent], counts: dict[str, int], *, commit: bool = True) -> str:
    """One transaction as one multi-statement text. Each event's seq is computed by the server from
    the counter the upsert just moved: ``last_seq - back``, ``back`` counting from the tenant's last
    event in this batch. Tenant ids and types are plain names (checked); payloads are hex literals
    and timestamps digits, so nothing needs escaping, whatever the sql_mode."""
    tenant_ids = sorted(counts)  # one lock order for every writer: no deadlocks between batches
    for name in (*tenant_ids, *{e[1] for e in events}):
        if not _SAFE_NAME.match(name):
            raise ValueError(f"event log: invalid tenant id or type {name!r}")
    upsert = (
        "INSERT INTO tenant_event_seq (tenant_id, last_seq) VALUES "
        + ",".join(f"('{t}',{counts[t]})" for t in tenant_ids)
        + " "
        + _COUNTER_MOVE
    )
    remaining = dict(counts)
    selects = []
    for tenant_id, type_, ts, data in events:
        remaining[tenant_id] -= 1
        template = _ROW_SELECT if selects else _FIRST_ROW_SELECT  # the first row names the columns
        selects.append(
            template
            % (
                tenant_id,
                remaining[tenant_id],
                type_,
                ts.isoformat(sep=" ", timespec="microseconds"),
                data.encode().hex(),
            )
        )
    insert = (
        "INSERT INTO event_log (tenant_id, seq, type, ts, data) "
        "SELECT v.t, c.last_seq - v.b, v.ty, v.ts, v.d FROM "
        f"({' UNION ALL '.join(selects)}) AS v JOIN tenant_event_seq AS c ON c.tenant_id = v.t"
    )
    select = (
        "SELECT tenant_id, last_seq FROM tenant_event_seq WHERE tenant_id IN ("
        + ",".join(f"'{t}'" for t in tenant_ids)
        + ")"
    )
    return f"{upsert};{insert};{select};COMMIT" if commit else f"{upsert};{insert};{select}"


def _upsert_and_read_sql(counts: dict[str, int], writer: int | None = None) -> str:
    """The counter upsert (tenants in sorted order: one lock order for every writer, so batches
    cannot deadlock), then the counters as this transaction left them as ONE row of text,
    ``tenant last_seq;...;`` (one row to parse in the driver instead of one per tenant; tenant
    ids are plain names, checked here)."""
    tenant_ids = sorted(counts)
    for tenant_id in tenant_ids:
        if not _SAFE_NAME.match(tenant_id):
            raise ValueError(f"event log: invalid tenant id {tenant_id!r}")
    token = "NULL" if writer is None else str(int(writer))
    return (
        "INSERT INTO tenant_event_seq (tenant_id, last_seq, writer) VALUES "
        + ",".join(f"('{t}',{counts[t]},{token})" for t in tenant_ids)
        + " "
        + _COUNTER_MOVE
        + ";"
        "SELECT GROUP_CONCAT(tenant_id, ' ', last_seq, ';' SEPARATOR '') FROM tenant_event_seq "
        "WHERE tenant_id IN (" + ",".join(f"'{t}'" for t in tenant_ids) + ")"
    )


def _row_tails(events: Sequence[NewEvent]) -> list[str]:
    """Each event's row of the plain multi-row INSERT but its tenant and seq: ``,'type','ts',X'data')``
    (types are plain names, checked here; payloads hex literals; a batch's events mostly share their
    millisecond, so each timestamp is written once)."""
    for type_ in {e[1] for e in events}:
        if not _SAFE_NAME.match(type_):
            raise ValueError(f"event log: invalid type {type_!r}")
    stamps: dict[dt.datetime, str] = {}
    tails = []
    for _t, type_, ts, data in events:
        stamp = stamps.get(ts)
        if stamp is None:
            stamp = stamps[ts] = ts.isoformat(sep=" ", timespec="microseconds")
        tails.append(f",'{type_}','{stamp}',X'{data.encode().hex()}')")
    return tails


def _is_mysql(conn: AsyncConnection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _has_returning(conn: AsyncConnection) -> bool:
    """MariaDB 10.5+ returns the upserted rows (updated values included); MySQL cannot."""
    dialect = conn.dialect
    return bool(getattr(dialect, "is_mariadb", False)) and (dialect.server_version_info or ()) >= (10, 5)


async def allocate_seqs(conn: AsyncConnection, counts: dict[str, int]) -> dict[str, int]:
    """Reserve ``counts[tenant]`` new seqs per tenant; returns each tenant's FIRST reserved seq.

    The counter rows stay locked until ``conn``'s transaction ends (tenants are locked in sorted
    order, so two batches cannot deadlock on each other)."""
    tenant_ids = sorted(counts)
    if _is_mysql(conn) and _has_returning(conn):  # MariaDB >= 10.5: one round trip
        values = ", ".join(["(%s, %s)"] * len(tenant_ids))
        result = await conn.exec_driver_sql(
            _MARIADB_UPSERT_RETURNING.format(values), tuple(v for t in tenant_ids for v in (t, counts[t]))
        )
    elif _is_mysql(conn):
        await conn.exec_driver_sql(_MYSQL_UPSERT, [(t, counts[t]) for t in tenant_ids])
        result = await conn.exec_driver_sql(
            _MYSQL_SELECT.format(", ".join(["%s"] * len(tenant_ids))), tuple(tenant_ids)
        )
    else:
        await conn.execute(_sqlite_upsert_counters(counts))
        result = await conn.execute(
            sa.select(tenant_event_seq.c.tenant_id, tenant_event_seq.c.last_seq).where(
                tenant_event_seq.c.tenant_id.in_(tenant_ids)
            )
        )
    return {tenant_id: last - counts[tenant_id] + 1 for tenant_id, last in result}


def _count(events: Sequence[NewEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tenant_id, *_ in events:
        counts[tenant_id] = counts.get(tenant_id, 0) + 1
    return counts


def _number(events: Sequence[NewEvent], first_seq: dict[str, int]) -> list[Row]:
    """Rows ``(tenant_id, seq, type, ts, data)``: seqs from each tenant's first, in input order."""
    next_seq = dict(first_seq)
    rows = []
    for tenant_id, type_, ts, data in events:
        seq = next_seq[tenant_id]
        next_seq[tenant_id] = seq + 1
        rows.append((tenant_id, seq, type_, ts, data))
    return rows


async def append_events(
    conn: AsyncConnection, events: Sequence[NewEvent], *, before: list[str] | None = None
) -> list[int]:
    """Append events (any tenants) in one multi-row insert; returns the seq of each, in input order.

    Call inside a transaction: the seqs become visible when it commits. ``before``: raw statements
    (MariaDB/MySQL) sent first in the same round trip; emptied once sent (elsewhere: must be empty)."""
    if _is_mysql(conn):
        # One round trip on the driver connection, inside the caller's transaction: the counter
        # upsert, the insert computing each seq from the counter, the counters as left (see
        # ``_one_trip_sql``); no SQLAlchemy statement machinery.
        counts = _count(events)
        sql = _one_trip_sql(events, counts, commit=False)
        skip = 0
        if before:
            sql, skip, before[:] = ";".join([*before, sql]), len(before), []
        raw = await conn.get_raw_connection()
        try:
            async with raw.driver_connection.cursor() as cur:
                await cur.execute(sql)  # the caller's statements, then the counter upsert
                for _ in range(skip):
                    await cur.nextset()
                await cur.nextset()  # the insert
                inserted = cur.rowcount
                await cur.nextset()  # the counters, as this transaction left them
                last = dict(await cur.fetchall())
        except Exception as exc:
            translated = as_sqlalchemy_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        if inserted != len(events):  # pragma: no cover - the join cannot drop rows after the upsert
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return [r[1] for r in _number(events, {t: last[t] - n + 1 for t, n in counts.items()})]
    if before:
        raise ValueError("raw statements before the append are for MariaDB/MySQL only")
    rows = _number(events, await allocate_seqs(conn, _count(events)))
    await conn.execute(
        event_log.insert(), [dict(zip(("tenant_id", "seq", "type", "ts", "data"), r)) for r in rows]
    )
    return [r[1] for r in rows]


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


class EventLogWriter:
    """Appends batches, each in its own transaction, for the publisher's group commit.

    On MariaDB/MySQL it keeps ONE dedicated connection and talks to the driver directly: no pool
    checkout, ping, reset or SQLAlchemy statement machinery per batch. On MariaDB a batch whose seqs
    the caller predicted is one round trip (``append_predicted``); otherwise two (counter upsert and
    the counters read back in one row; then one plain multi-row INSERT with the seqs inlined and
    COMMIT, see ``_append_two_trips``); on MySQL one (counter upsert, insert computing each seq from
    the counter, read of the counters, COMMIT).
    Elsewhere (SQLite) it uses the engine like any caller.
    Driver errors come out as SQLAlchemy's (IntegrityError, OperationalError), as from the engine.
    """

    MAX_AGE_S = 1800.0  # like the pool's recycle: never lean on a connection the server may drop
    PING_IDLE_S = 1.0  # idle longer than this: ping first (a lost connection found before sending
    #                    is safe to replace; one lost mid-transaction leaves the outcome unknown)

    def __init__(self, db: Any) -> None:
        self.db = db
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._opened_at = 0.0
        self._used_at = 0.0
        self._two_trips = False  # MariaDB (not MySQL): see _append_two_trips

    @property
    def predicts(self) -> bool:
        """Whether :meth:`append_predicted` is available (MariaDB; known once connected)."""
        return self._two_trips

    async def append(
        self, events: Sequence[NewEvent], *, on_locked: OnLocked | None = None, writer: int | None = None
    ) -> list[int]:
        """Append and commit; returns the seqs in input order. ``on_locked(last)`` is called once the
        tenants' counter rows are locked by this transaction (its seqs are then settled: another
        transaction's upsert for any of these tenants waits until this one ends), before COMMIT;
        ``last`` is each tenant's counter as this transaction leaves it, or None where that is
        not known yet (MySQL, SQLite)."""
        if self.db.is_sqlite:
            async with self.db.begin() as conn:
                seqs = await append_events(conn, events)
            if on_locked is not None:
                on_locked(None)
            return seqs
        counts = _count(events)
        driver = await self._driver_connection()
        if self._two_trips:
            return await self._append_two_trips(driver, events, counts, on_locked, writer)
        sql = _one_trip_sql(events, counts)
        async with self._driver_errors(), driver.cursor() as cur:
            await cur.execute(sql)  # the counter upsert (its result comes first; the rest follows)
            if on_locked is not None:
                on_locked(None)
            await cur.nextset()  # the insert
            inserted = cur.rowcount
            await cur.nextset()  # the counters, as this transaction left them
            last = dict(await cur.fetchall())
            await cur.nextset()  # COMMIT
        self._used_at = time.monotonic()
        if inserted != len(events):  # pragma: no cover - the join cannot drop rows after the upsert
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return [r[1] for r in _number(events, {t: last[t] - n + 1 for t, n in counts.items()})]

    async def _append_two_trips(
        self,
        driver: Any,
        events: Sequence[NewEvent],
        counts: dict[str, int],
        on_locked: OnLocked | None,
        writer: int | None = None,
    ) -> list[int]:
        """MariaDB: trip 1, the counter upsert (rows locked from here) and the counters as this
        transaction left them; trip 2, ONE plain multi-row INSERT with the seqs inlined, and
        COMMIT. MariaDB spends about half the CPU per event on it that the one-trip
        INSERT ... SELECT costs (a derived table of one SELECT per event, joined to the
        counters), for a second round trip."""
        upsert = _upsert_and_read_sql(counts, writer)
        tails = _row_tails(events)  # built before the locks are taken
        async with self._driver_errors(), driver.cursor() as cur:
            await cur.execute(upsert)  # the upsert's result comes first: its rows are locked
            await cur.nextset()  # the counters as this transaction left them, in ONE row
            [(text,)] = await cur.fetchall()
            pairs = (text.decode() if isinstance(text, bytes) else text).split(";")
            if pairs.pop() != "" or len(pairs) != len(counts):  # cut short (group_concat_max_len)
                raise RuntimeError("event log: the counters could not be read back")
            last = {}
            for pair in pairs:
                tenant_id, _, value = pair.partition(" ")
                last[tenant_id] = int(value)
            if on_locked is not None:
                on_locked(last)
            next_seq = {t: last[t] - n + 1 for t, n in counts.items()}
            seqs = []
            values = []
            for (tenant_id, *_), tail in zip(events, tails):
                seq = next_seq[tenant_id]
                next_seq[tenant_id] = seq + 1
                seqs.append(seq)
                values.append(f"('{tenant_id}',{seq}{tail}")
            await cur.execute(_MYSQL_INSERT + ",".join(values) + ";COMMIT")
            inserted = cur.rowcount
            await cur.nextset()  # COMMIT
        self._used_at = time.monotonic()
        if inserted != len(events):  # pragma: no cover - a multi-row INSERT is all or nothing
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return seqs

    async def append_predicted(
        self,
        events: Sequence[NewEvent],
        seqs: Sequence[int],
        *,
        writer: int,
        after: dict[str, int],
        on_sent: Callable[[], None] | None = None,
    ) -> list[int]:
        """MariaDB: append with the seqs the caller predicted, and commit, in ONE round trip:
        the counter upsert (rows locked from here; ``writer``, this batch's random token, recorded
        as the counters' last mover) that checks each counter was moved last by ``after[tenant]``,
        the batch these seqs were predicted after; ONE plain multi-row INSERT; COMMIT. When a check
        fails (another node or transaction moved a counter, an earlier batch was rolled back or
        has not reached the database yet), the statements after it do not run, everything is
        rolled back and :class:`CounterMoved` is raised: nothing is stored under a wrong seq, so
        the log stays gapless whoever predicted what. See the publisher for how seqs are predicted.
        (A counter row that does not exist is created at the batch's last seq: rows go only with
        their tenant, whose events then fail on its foreign key.) ``on_sent`` is called once the
        statements are written, before the answer."""
        driver = await self._driver_connection()
        if not self._two_trips:
            raise RuntimeError("predicted appends are for MariaDB")
        counts = _count(events)
        last: dict[str, int] = {}
        values = []
        for (tenant_id, *_), seq, tail in zip(events, seqs, _row_tails(events), strict=True):
            last[tenant_id] = seq
            values.append(f"('{tenant_id}',{seq}{tail}")
        tenant_ids = sorted(counts)  # one lock order for every writer: no deadlocks between batches
        for tenant_id in tenant_ids:
            if not _SAFE_NAME.match(tenant_id):
                raise ValueError(f"event log: invalid tenant id {tenant_id!r}")
        for tenant_id in tenant_ids:
            if last[tenant_id] - counts[tenant_id] < 0:
                raise ValueError(f"event log: predicted seqs for {tenant_id!r} start below 1")
        token = int(writer)
        # The check is in the upsert: a counter last moved by the batch predicted after is set to
        # where this batch ends; any other is pushed past BIGINT's range, an error (1690) that
        # stops the statements after it (IF evaluates only the branch it takes). Moved last by
        # that batch means it committed and nobody moved the counter since, so it stands where
        # that batch ended and these seqs follow it (by induction back to a counter the database
        # numbered and this process read under its row lock).
        sql = (
            "INSERT INTO tenant_event_seq (tenant_id, last_seq, writer, prev_writer) VALUES "
            + ",".join(f"('{t}',{last[t]},{token},{int(after[t])})" for t in tenant_ids)
            + " ON DUPLICATE KEY UPDATE last_seq = IF(writer <=> VALUES(prev_writer), VALUES(last_seq), "
            "last_seq + 9223372036854775807), prev_writer = writer, writer = VALUES(writer);"
            + _MYSQL_INSERT
            + ",".join(values)
            + ";COMMIT"
        )
        try:
            async with self._driver_errors(), driver.cursor() as cur:
                if on_sent is not None:  # runs once the statements are written (execute writes first)
                    asyncio.get_running_loop().call_soon(on_sent)
                await cur.execute(sql)  # the counter upsert, with the check
                await cur.nextset()  # the insert
                inserted = cur.rowcount
                await cur.nextset()  # COMMIT
        except sa.exc.DBAPIError as exc:
            orig = exc.orig
            if isinstance(orig, _pymysql_errors.MySQLError) and orig.args and orig.args[0] == _OUT_OF_RANGE:
                raise CounterMoved(sorted(counts)) from exc  # rolled back by _driver_errors
            raise
        self._used_at = time.monotonic()
        if inserted != len(events):  # pragma: no cover - a multi-row INSERT is all or nothing
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return list(seqs)

    @contextlib.asynccontextmanager
    async def _driver_errors(self) -> AsyncIterator[None]:
        """Driver errors come out as SQLAlchemy's; the connection is dropped after one."""
        try:
            yield
        except BaseException as exc:
            await self._after_error(exc)
            translated = _as_sqlalchemy_error(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def _driver_connection(self) -> Any:
        now = time.monotonic()
        if self._conn is not None and now - self._opened_at > self.MAX_AGE_S:
            await self.close()
        if self._conn is not None and now - self._used_at > self.PING_IDLE_S:
            try:
                await self._driver.ping(reconnect=False)
            except Exception:
                await self.close(invalidate=True)
        if self._conn is None:
            conn = await self.db.engine.connect()
            try:
                raw = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._conn, self._driver, self._opened_at = conn, raw.driver_connection, now
            self._two_trips = bool(getattr(conn.dialect, "is_mariadb", False))
        self._used_at = now
        return self._driver

    async def _after_error(self, exc: BaseException) -> None:
        """Roll back; a connection in an unknown state (lost, cancelled mid-statement) is dropped."""
        if self._driver is None:
            return
        if not _connection_lost(exc) and isinstance(exc, _pymysql_errors.MySQLError):
            # A server-side error (duplicate, deadlock, bad data): the connection itself is fine.
            with contextlib.suppress(Exception):
                await self._driver.rollback()
                return
        await self.close(invalidate=True)

    async def close(self, *, invalidate: bool = False) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # it is going away either way
            if invalidate:
                await conn.invalidate()
            await conn.close()


def _connection_lost(exc: BaseException) -> bool:
    """Client-side errors (codes 2000+: server gone, connection lost, cannot connect) and socket errors."""
    if isinstance(exc, _pymysql_errors.InterfaceError | ConnectionError):
        return True
    code = exc.args[0] if isinstance(exc, _pymysql_errors.MySQLError) and exc.args else None
    return isinstance(code, int) and code >= 2000


def as_sqlalchemy_error(exc: BaseException, what: str = "event log append") -> BaseException:
    """The engine's exception types for the driver's, so callers catch one family."""
    if isinstance(exc, _pymysql_errors.IntegrityError):
        return sa.exc.IntegrityError(what, None, exc)
    if isinstance(exc, _pymysql_errors.OperationalError | _pymysql_errors.InterfaceError | ConnectionError):
        return sa.exc.OperationalError(what, None, exc)  # type: ignore[arg-type]
    if isinstance(exc, _pymysql_errors.MySQLError):
        return sa.exc.DBAPIError(what, None, exc)
    return exc


_as_sqlalchemy_error = as_sqlalchemy_error
