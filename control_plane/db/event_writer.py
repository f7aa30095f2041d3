"""The event log's group-commit writer: batches appended, each in its own transaction, for the
publisher. Re-exported by ``db/events.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pymysql.err as driver_errors
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import event_log_sql as raw_sql
from control_plane.db import sql
from control_plane.db.event_log_sql import NewEvent
from control_plane.db.events import CounterMoved, OnLocked, append_events, count_by_tenant, first_seqs, number

_WHAT = "event log append"


class EventLogWriter:
    """Appends batches, each in its own transaction, for the publisher's group commit.

    On MariaDB/MySQL it keeps ONE dedicated connection and talks to the driver directly: no pool
    checkout, ping, reset or SQLAlchemy statement machinery per batch. On MariaDB a batch whose seqs
    the caller predicted is one round trip (``append_predicted``); otherwise two (counter upsert and
    the counters read back in one row; then one plain multi-row INSERT with the seqs inlined and
    COMMIT, see ``_append_two_trips``); on MySQL one (counter upsert, insert computing each seq from
    the counter, read of the counters, COMMIT).
    Elsewhere (SQLite, or inside ``sql.core_paths()``) it uses the engine like any caller.
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
        if self.db.is_sqlite or sql.core_only():
            async with self.db.begin() as conn:
                seqs = await append_events(conn, events)
            if on_locked is not None:
                on_locked(None)
            return seqs
        counts = count_by_tenant(events)
        driver = await self._driver_connection()
        if self._two_trips:
            return await self._append_two_trips(driver, events, counts, on_locked, writer)
        statements = [*raw_sql.one_trip(events, counts), "COMMIT"]
        after_first = None if on_locked is None else (lambda: on_locked(None))
        async with self._driver_errors():
            results = await sql.driver_round_trip(driver, statements, what=_WHAT, after_first=after_first)
        (_, inserted), (last, _) = results[raw_sql.ONE_TRIP_INSERT], results[raw_sql.ONE_TRIP_COUNTERS]
        self._used_at = time.monotonic()
        if inserted != len(events):  # pragma: no cover - a multi-row INSERT is all or nothing
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return number(events, first_seqs(dict(last), counts))

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
        COMMIT. MariaDB spent about half the CPU per event on it that the one-trip append cost
        when that was an INSERT ... SELECT over a derived table of one SELECT per event, joined to
        the counters (``one_trip`` is a plain multi-row INSERT too now, its seqs computed from
        session variables), for a second round trip."""
        upsert = raw_sql.upsert_and_read(counts, writer)
        tails = raw_sql.row_tails(events)  # built before the locks are taken
        async with self._driver_errors():
            _, ([(text,)], _) = await sql.driver_round_trip(driver, upsert, what=_WHAT)
            last = raw_sql.parse_counters(text, len(counts))
            if on_locked is not None:
                on_locked(last)
            seqs = number(events, first_seqs(last, counts))
            insert = raw_sql.insert_rows(events, seqs, tails)
            (_, inserted), _ = await sql.driver_round_trip(driver, [insert, "COMMIT"], what=_WHAT)
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
        counts = count_by_tenant(events)
        last = dict(zip((e[0] for e in events), seqs, strict=True))  # each tenant's last seq
        for tenant_id, n in counts.items():
            if last[tenant_id] - n < 0:
                raise ValueError(f"event log: predicted seqs for {tenant_id!r} start below 1")
        statements = [
            raw_sql.predicted_upsert(last, writer, after),
            raw_sql.insert_rows(events, seqs, raw_sql.row_tails(events)),
            "COMMIT",
        ]
        try:
            async with self._driver_errors():
                if on_sent is not None:  # runs once the statements are written (execute writes first)
                    asyncio.get_running_loop().call_soon(on_sent)
                _, (_, inserted), _ = await sql.driver_round_trip(driver, statements, what=_WHAT)
        except sa.exc.DBAPIError as exc:
            if sql.error_code(exc) == raw_sql.OUT_OF_RANGE:
                raise CounterMoved(sorted(counts)) from exc  # rolled back by _driver_errors
            raise
        self._used_at = time.monotonic()
        if inserted != len(events):  # pragma: no cover - a multi-row INSERT is all or nothing
            raise RuntimeError(f"event log: inserted {inserted} rows of {len(events)}")
        return list(seqs)

    @contextlib.asynccontextmanager
    async def _driver_errors(self) -> AsyncIterator[None]:
        """Driver errors come out as SQLAlchemy's; the transaction is rolled back after one, and
        a connection in an unknown state dropped."""
        try:
            yield
        except BaseException as exc:
            await self._after_error(exc)
            translated = sql.as_sqlalchemy_error(exc, _WHAT)
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
        if not sql.is_connection_lost(exc) and isinstance(sql.driver_error(exc), driver_errors.MySQLError):
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
