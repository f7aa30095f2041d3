"""The one SQL quoter, the round-trip helper, the driver-error translation and the deadlock retry
(control_plane/db/sql.py). Literals are checked against the server: what is quoted comes back equal."""

from __future__ import annotations

import datetime as dt
import enum

import pymysql.err
import pytest
import sqlalchemy as sa

from control_plane.db import event_log_sql, sql
from control_plane.db.engine import DatabaseUnavailable

pytestmark = pytest.mark.smoke

NASTY = [
    "",
    "plain",
    'O\'Brien "quoted" back\\slash',
    "\\'; DROP TABLE tenants; --",
    "line\nbreak\ttab\r\x00nul\x1a",
    "naïve café ☕ 😀 𝄞",
    "%s %(x)s {} ?",
    "_utf8mb4 X'41'",
    "a" * 5000,
]


class Color(enum.StrEnum):
    RED = "red"


def test_literal_shapes():
    assert sql.literal(None) == "NULL"
    assert sql.literal("abc123") == "'abc123'" and sql.literal_hex("abc123") == "_utf8mb4 X'616263313233'"
    assert sql.literal("") == "''"
    assert sql.literal("a b") == "'a b'" and sql.literal('{"a":"b=c"}') == '\'{"a":"b=c"}\''
    assert sql.literal("é") == "_utf8mb4'é'"
    # a quote, a backslash or a control character: hex (nothing to escape whatever the sql_mode)
    assert sql.literal("it's") == "_utf8mb4 X'69742773'" and sql.literal("a\\b") == "_utf8mb4 X'615c62'"
    assert sql.literal("a\nb") == "_utf8mb4 X'610a62'" and sql.literal("\u00e9\x00") == "_utf8mb4 X'c3a900'"
    assert sql.literal(True) == "1" and sql.literal(False) == "0"
    assert sql.literal(42) == "42" and sql.literal(-7) == "-7"
    assert sql.literal(1.5) == "1.5"
    assert sql.literal(Color.RED) == "'red'"
    assert sql.literal(dt.datetime(2026, 1, 2, 3, 4, 5)) == "'2026-01-02 03:04:05.000000'"
    assert sql.literal(dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC)) == "'2026-01-02 03:04:05.000007'"
    assert sql.literal(dt.date(2026, 1, 2)) == "'2026-01-02'"
    assert sql.literal(b"\x00'") == "X'0027'" and sql.literal(b"") == "X''"
    with pytest.raises(ValueError):
        sql.literal(float("inf"))
    with pytest.raises(ValueError):
        sql.literal(float("nan"))
    with pytest.raises(TypeError):
        sql.literal(object())


@pytest.mark.mariadb
async def test_literals_round_trip_through_mariadb(db):
    stamp = dt.datetime(2026, 12, 31, 23, 59, 58, 123456)
    async with db.begin() as conn:
        assert sql.is_mysql(conn), "driver round trips are MariaDB's (this test is marked mariadb)"
        statements = [f"SELECT {sql.literal(s)}" for s in NASTY]
        statements += [f"SELECT CAST({sql.literal(stamp)} AS DATETIME(6))", f"SELECT {sql.literal(None)}"]
        statements += [f"SELECT {sql.literal(12345678901234)}, {sql.literal(True)}, {sql.literal(2.25)}"]
        results = await sql.round_trip(conn, statements)
    assert len(results) == len(statements)
    got = [rows[0][0] for rows, _ in results[: len(NASTY)]]
    assert [g.decode() if isinstance(g, bytes) else g for g in got] == NASTY
    assert results[len(NASTY)][0] == [(stamp,)]
    assert results[len(NASTY) + 1][0] == [(None,)]
    assert results[-1][0] == [(12345678901234, 1, 2.25)]


@pytest.mark.mariadb
async def test_literals_stored_and_compared_in_a_utf8mb4_column(db):
    async with db.begin() as conn:
        assert sql.is_mysql(conn), "driver round trips are MariaDB's (this test is marked mariadb)"
        await conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE quoting (id INT PRIMARY KEY, v MEDIUMTEXT CHARACTER SET utf8mb4)"
        )
        values = ",".join(f"({n},{sql.literal(s)})" for n, s in enumerate(NASTY))
        (_, inserted), (rows, _), (found, _) = await sql.round_trip(
            conn,
            [
                f"INSERT INTO quoting (id, v) VALUES {values}",
                "SELECT v FROM quoting ORDER BY id",
                f"SELECT id FROM quoting WHERE v = {sql.literal(NASTY[5])}",
            ],
        )
    assert inserted == len(NASTY)
    assert [r[0] for r in rows] == NASTY
    assert found == [(5,)]


@pytest.mark.mariadb
async def test_round_trip_translates_driver_errors_and_calls_after_first(db):
    seen = []
    async with db.connect() as conn:
        assert sql.is_mysql(conn), "driver round trips are MariaDB's (this test is marked mariadb)"
        raw = await conn.get_raw_connection()
        results = await sql.driver_round_trip(
            raw.driver_connection, ["SELECT 1", "SELECT 2"], after_first=lambda: seen.append(1)
        )
        assert results == [([(1,)], 1), ([(2,)], 1)] and seen == [1]
        with pytest.raises(sa.exc.DBAPIError) as info:
            await sql.round_trip(conn, ["SELECT * FROM no_such_table"], what="probe")
        assert isinstance(info.value.orig, pymysql.err.MySQLError)
        assert sql.error_code(info.value) == 1146
        await conn.rollback()


def test_error_translation_and_classification():
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found")
    wrapped = sql.as_sqlalchemy_error(deadlock, "x")
    assert isinstance(wrapped, sa.exc.OperationalError) and wrapped.orig is deadlock
    assert sql.is_deadlock(wrapped) and sql.is_deadlock(deadlock)
    assert sql.is_deadlock(sql.as_sqlalchemy_error(pymysql.err.OperationalError(1205, "lock wait")))
    assert not sql.is_deadlock(sql.as_sqlalchemy_error(pymysql.err.OperationalError(1146, "no table")))
    dup = sql.as_sqlalchemy_error(pymysql.err.IntegrityError(1062, "Duplicate"))
    assert isinstance(dup, sa.exc.IntegrityError)
    assert isinstance(
        sql.as_sqlalchemy_error(pymysql.err.ProgrammingError(1064, "syntax")), sa.exc.DBAPIError
    )
    plain = ValueError("not a driver error")
    assert sql.as_sqlalchemy_error(plain) is plain
    gone = pymysql.err.OperationalError(2013, "Lost connection to server during query")
    assert sql.is_connection_lost(gone) and sql.is_connection_lost(sql.as_sqlalchemy_error(gone))
    assert sql.is_connection_lost(ConnectionResetError())
    assert sql.is_connection_lost(pymysql.err.InterfaceError(0, ""))
    assert not sql.is_connection_lost(deadlock)
    # A number in any other exception's args is no error code.
    assert sql.error_code(KeyError(1213)) is None and not sql.is_deadlock(KeyError(1213))
    assert not sql.is_connection_lost(ValueError(2013))


def test_is_db_outage():
    assert sql.is_db_outage(sql.as_sqlalchemy_error(pymysql.err.OperationalError(2003, "Can't connect")))
    assert sql.is_db_outage(sa.exc.TimeoutError("QueuePool limit reached"))
    assert sql.is_db_outage(DatabaseUnavailable("down")) and sql.is_db_outage(ConnectionRefusedError())
    assert not sql.is_db_outage(sql.as_sqlalchemy_error(pymysql.err.IntegrityError(1062, "Duplicate")))
    assert not sql.is_db_outage(ValueError("bad item"))


def test_literal_cache_quotes_each_value_once_like_literal():
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 6)
    cached = sql.literal_cache()
    values = ["tenant1", "ünï 'x'", None, at, "tenant1", at, 7]
    assert [cached(v) for v in values] == [sql.literal(v) for v in values]
    assert cached(at) is cached(at)  # quoted once


async def test_retry_on_deadlock_retries_deadlocks_only():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sql.as_sqlalchemy_error(pymysql.err.OperationalError(1213, "Deadlock found"))
        return "done"

    assert await sql.retry_on_deadlock(flaky, backoff_s=0) == "done" and len(calls) == 3

    async def always():
        calls.append(1)
        raise sql.as_sqlalchemy_error(pymysql.err.OperationalError(1205, "lock wait timeout"))

    calls.clear()
    with pytest.raises(sa.exc.OperationalError):
        await sql.retry_on_deadlock(always, attempts=4, backoff_s=0)
    assert len(calls) == 4

    async def other():
        calls.append(1)
        raise sql.as_sqlalchemy_error(pymysql.err.IntegrityError(1062, "Duplicate"))

    calls.clear()
    with pytest.raises(sa.exc.IntegrityError):
        await sql.retry_on_deadlock(other, backoff_s=0)
    assert len(calls) == 1


async def test_retry_on_deadlock_retries_a_lost_connection_only_when_told_how_to_forget_it():
    calls: list[str] = []
    forgotten: list[int] = []

    async def lost_once() -> str:
        calls.append("try")
        if len(calls) == 1:
            raise sql.as_sqlalchemy_error(pymysql.err.OperationalError(2013, "Lost connection"))
        return "done"

    async def forget() -> None:
        forgotten.append(len(calls))

    with pytest.raises(sa.exc.OperationalError):  # by default a lost connection propagates
        await sql.retry_on_deadlock(lost_once, backoff_s=0)
    calls.clear()
    assert await sql.retry_on_deadlock(lost_once, backoff_s=0, lost=forget) == "done"
    assert calls == ["try", "try"] and forgotten == [1]

    async def gone() -> None:
        calls.append("try")
        raise ConnectionResetError("gone")

    calls.clear()
    with pytest.raises(ConnectionResetError):
        await sql.retry_on_deadlock(gone, attempts=3, backoff_s=0, lost=forget)
    assert len(calls) == 3


@pytest.mark.mariadb
async def test_core_paths_turns_the_fast_paths_off(db):
    async with db.connect() as conn:
        fast = sql.raw_mariadb(conn)
        with sql.core_paths():
            assert not sql.raw_mariadb(conn)
        assert sql.raw_mariadb(conn) == fast


def test_the_event_log_writes_payloads_as_string_literals():
    """The event log writes each payload as ``sql.literal_str`` does (round trips tested above)."""
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 6000)
    events = [("0" * 32, "message.received", ts, s) for s in NASTY]
    expected_tails = [f",'message.received',{sql.literal_dt(ts)},{sql.literal_str(s)})" for s in NASTY]
    assert event_log_sql.row_tails(events) == expected_tails
    insert = event_log_sql.one_trip(events, {"0" * 32: len(events)})[event_log_sql.ONE_TRIP_INSERT]
    for s in NASTY:
        assert sql.literal_str(s) in insert
    with pytest.raises(ValueError):
        event_log_sql.row_tails([("0" * 32, "bad type'", ts, "{}")])
    with pytest.raises(ValueError):
        event_log_sql.upsert_and_read({"bad tenant\n": 1})
