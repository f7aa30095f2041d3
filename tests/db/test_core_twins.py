"""The SQLAlchemy Core twins of the MariaDB fast paths, run on MariaDB (``sql.core_paths()``): on the
same input they return the same and leave the database in the same state as the written-out
statements. (SQLite runs the twins in the smoke run; this keeps them honest where the fast paths
run in production.)"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.db import events as events_db
from control_plane.db import outbox as outbox_db
from control_plane.db import sql
from control_plane.db import tenants as tenants_db
from control_plane.db.engine import utcnow
from control_plane.db.messages import conversations, messages
from control_plane.db.outbox_schema import message_transitions, outbox

pytestmark = pytest.mark.mariadb

NODE = "node-1 'ü\\"
ITEMS = [
    {"wa_id": f"+49 151 000000{i % 3}", "type": "text", "content": {"body": f"hi {i} 'q' \\ ünï 😀"}}
    for i in range(7)
]
ITEMS[3]["requested_provider"] = "web"


async def _tenants(db: Any, n: int) -> list[str]:
    async with db.begin() as conn:
        return [(await tenants_db.create_tenant(conn, f"twin {i}"))["id"] for i in range(n)]


async def _outbox_state(conn: Any, tenant_id: str, ids: list[str], now: dt.datetime) -> list[tuple[Any, ...]]:
    """The tenant's outbox, messages and transitions, message ids replaced by their input index and
    times by "now" (the claims') or their offset from the first message's creation."""
    index = {m: n for n, m in enumerate(ids)}
    t0 = (
        await conn.execute(sa.select(sa.func.min(messages.c.created_at)).where(messages.c.id.in_(ids)))
    ).scalar()
    o, m, tr = outbox.c, messages.c, message_transitions.c
    boxes = await conn.execute(
        sa.select(o.message_id, o.state, o.attempts, o.claimed_by, o.claimed_at, o.next_attempt_at).where(
            o.tenant_id == tenant_id
        )
    )
    msgs = await conn.execute(
        sa.select(m.id, m.status, m.updated_at, conversations.c.wa_id)
        .join(conversations, conversations.c.id == m.conversation_id)
        .where(m.tenant_id == tenant_id)
    )
    trans = await conn.execute(
        sa.select(tr.message_id, tr.from_status, tr.to_status, tr.reason, tr.at)
        .where(tr.tenant_id == tenant_id)
        .order_by(tr.id)
    )

    def rel(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return "now" if value == now else value - t0
        return value

    return [
        *sorted(("outbox", index[r[0]], *map(rel, r[1:])) for r in boxes),
        *sorted(("message", index[r[0]], *map(rel, r[1:])) for r in msgs),
        *(("transition", index[r[0]], *map(rel, r[1:])) for r in trans),
    ]


def _claimed(rows: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        r["message_id"] = ids.index(r["message_id"])
        del r["conversation_id"], r["created_at"], r["next_attempt_at"]
        out.append(r)
    return out


async def _claim_all(db: Any, tenant_id: str, ids: list[str], now: dt.datetime) -> list[Any]:
    batches = []
    for limit in (5, 5, 5):  # 5, then the 2 left, then none
        async with db.begin() as conn:
            batches.append(_claimed(await outbox_db.claim(conn, tenant_id, NODE, limit=limit, now=now), ids))
    return batches


async def test_claim_core_twin_matches_the_fast_path(db):
    fast_tenant, core_tenant = await _tenants(db, 2)
    async with db.begin() as conn:
        assert sql.raw_mariadb(conn), "the fast path needs MariaDB >= 10.5"
        fast_ids = await outbox_db.enqueue_many(conn, fast_tenant, ITEMS)
    async with db.begin() as conn:
        core_ids = await outbox_db.enqueue_many(conn, core_tenant, ITEMS)
    now = utcnow() + dt.timedelta(seconds=1)

    fast = await _claim_all(db, fast_tenant, fast_ids, now)
    with sql.core_paths():
        core = await _claim_all(db, core_tenant, core_ids, now)

    assert [len(b) for b in fast] == [5, 2, 0]
    assert fast[0][0]["content"] == ITEMS[0]["content"] and fast[0][0]["attempts"] == 1
    assert core == fast
    async with db.connect() as conn:
        fast_state = await _outbox_state(conn, fast_tenant, fast_ids, now)
        core_state = await _outbox_state(conn, core_tenant, core_ids, now)
    assert any(s[0] == "transition" and s[3] == "sending" for s in fast_state)
    assert core_state == fast_state


def _events(tenant_ids: list[str], ts: dt.datetime) -> list[events_db.NewEvent]:
    data = [json.dumps({"n": n, "text": "'\\\"; --", "u": "ünï 😀"}, ensure_ascii=False) for n in range(5)]
    types = ["message.received", "message.status", "session.state"]
    return [(tenant_ids[n % len(tenant_ids)], types[n % 3], ts, d) for n, d in enumerate(data)]


async def _log_state(conn: Any, tenant_ids: list[str]) -> list[tuple[Any, ...]]:
    """Each tenant's events and counter, tenants replaced by their position."""
    rows = []
    for n, tenant_id in enumerate(tenant_ids):
        events = await events_db.events_after(conn, tenant_id, 0, limit=100)
        rows += [(n, e["seq"], e["type"], e["ts"], e["data"]) for e in events]
        counter = await conn.execute(
            sa.select(
                events_db.tenant_event_seq.c.last_seq,
                events_db.tenant_event_seq.c.writer,
                events_db.tenant_event_seq.c.prev_writer,
            ).where(events_db.tenant_event_seq.c.tenant_id == tenant_id)
        )
        rows.append((n, *counter.one()))
    return rows


async def _append_twice(db: Any, tenant_ids: list[str], ts: dt.datetime) -> list[list[int]]:
    """Two appends (the counters created, then moved), the first after a caller's raw statement."""
    seqs = []
    for _ in range(2):
        async with db.begin() as conn:
            before = [f"UPDATE tenants SET name = 'renamed' WHERE id = {sql.literal(tenant_ids[0])}"]
            seqs.append(await events_db.append_events(conn, _events(tenant_ids, ts), before=before))
            assert before == []  # sent
    return seqs


async def test_append_events_core_twin_matches_the_fast_path(db):
    tenant_ids = await _tenants(db, 4)
    fast_tenants, core_tenants = tenant_ids[:2], tenant_ids[2:]
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)

    fast = await _append_twice(db, fast_tenants, ts)
    with sql.core_paths():
        core = await _append_twice(db, core_tenants, ts)

    assert fast == [[1, 1, 2, 2, 3], [4, 3, 5, 4, 6]]
    assert core == fast
    async with db.connect() as conn:
        assert await _log_state(conn, core_tenants) == await _log_state(conn, fast_tenants)
        names = await conn.execute(
            sa.select(tenants_db.tenants.c.name).where(tenants_db.tenants.c.id.in_(tenant_ids))
        )
        assert sorted(r[0] for r in names) == ["renamed", "renamed", "twin 1", "twin 3"]


async def _writer_appends(
    writer: Any, tenant_ids: list[str], ts: dt.datetime
) -> tuple[list[list[int]], list[Any]]:
    seqs, locked = [], []
    for _ in range(2):
        seqs.append(await writer.append(_events(tenant_ids, ts), on_locked=locked.append))
    return seqs, locked


async def test_event_log_writer_core_twin_matches_the_driver_paths(db):
    tenant_ids = await _tenants(db, 6)
    two_trips, one_trip, core_tenants = tenant_ids[:2], tenant_ids[2:4], tenant_ids[4:]
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)
    writer = events_db.EventLogWriter(db)
    try:
        fast, fast_locked = await _writer_appends(writer, two_trips, ts)
        assert writer.predicts  # MariaDB: two trips
        writer._two_trips = False  # the one-trip statements (MySQL's) on the same connection
        single, single_locked = await _writer_appends(writer, one_trip, ts)
        with sql.core_paths():
            core_writer = events_db.EventLogWriter(db)
            core, core_locked = await _writer_appends(core_writer, core_tenants, ts)
            await core_writer.close()
    finally:
        await writer.close()

    assert fast == single == core == [[1, 1, 2, 2, 3], [4, 3, 5, 4, 6]]
    assert fast_locked == [{two_trips[0]: 3, two_trips[1]: 2}, {two_trips[0]: 6, two_trips[1]: 4}]
    assert single_locked == core_locked == [None, None]
    async with db.connect() as conn:
        expected = await _log_state(conn, two_trips)
        assert await _log_state(conn, one_trip) == expected
        assert await _log_state(conn, core_tenants) == expected
