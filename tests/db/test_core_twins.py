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
from control_plane.db.messages import conversations, message_statuses, messages
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


async def _outbox_state(
    conn: Any, tenant_id: str, ids: list[str], *instants: dt.datetime
) -> list[tuple[Any, ...]]:
    """The tenant's outbox, messages (with their conversations) and transitions, message ids replaced
    by their input index, ``instants`` by their position and other times by their offset from the
    first message's creation."""
    index = {m: n for n, m in enumerate(ids)}
    t0 = (
        await conn.execute(sa.select(sa.func.min(messages.c.created_at)).where(messages.c.id.in_(ids)))
    ).scalar()
    o, m, c, tr = outbox.c, messages.c, conversations.c, message_transitions.c
    boxes = await conn.execute(
        sa.select(
            o.message_id, o.state, o.attempts, o.claimed_by, o.claimed_at, o.next_attempt_at,
            o.route_provider, o.route_reason, o.last_error, o.updated_at,
        ).where(o.tenant_id == tenant_id)
    )  # fmt: skip
    msgs = await conn.execute(
        sa.select(
            m.id, m.status, m.provider, m.provider_message_id, m.error_code, m.error_message,
            m.sent_at, m.failed_at, m.updated_at, c.wa_id, c.provider_last,
        )
        .join(conversations, c.id == m.conversation_id)
        .where(m.tenant_id == tenant_id)
    )  # fmt: skip
    trans = await conn.execute(
        sa.select(
            tr.message_id, tr.from_status, tr.to_status, tr.provider, tr.reason, tr.error_code,
            tr.error_message, tr.at,
        )
        .where(tr.tenant_id == tenant_id)
        .order_by(tr.id)
    )  # fmt: skip

    def rel(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return f"instant {instants.index(value)}" if value in instants else value - t0
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


async def _queued(db: Any, n: int) -> list[tuple[str, list[str]]]:
    """``n`` tenants, each with ITEMS in its outbox: (tenant id, message ids)."""
    out = []
    for tenant_id in await _tenants(db, n):
        async with db.begin() as conn:
            assert sql.raw_mariadb(conn), "the fast path needs MariaDB >= 10.5"
            out.append((tenant_id, await outbox_db.enqueue_many(conn, tenant_id, ITEMS)))
    return out


async def test_claim_core_twin_matches_the_fast_path(db):
    (fast_tenant, fast_ids), (core_tenant, core_ids) = await _queued(db, 2)
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


async def _record_sent(
    db: Any, tenants: list[tuple[str, list[str]]], claimed: dict[str, Any], now: dt.datetime, mixed: bool
) -> Any:
    """Every claimed message sent (Cloud API ids ``wamid.<index>``), one record for all tenants; a
    status stored before its message knew its id, for ``wamid.3``, is reported back. ``mixed``: one
    contact's messages go by both roads in the batch (else each contact's by one)."""
    items = []
    for tenant_id, ids in tenants:
        for r in claimed[tenant_id]:
            n = ids.index(r["message_id"])
            outcome = {
                "kind": "sent",
                "message_id": r["message_id"],
                "provider": "business_api" if (n if mixed else n % 3) % 2 else "web",
                "provider_message_id": f"wamid.{n}",
                "conversation_id": r["conversation_id"],
                "reason": f"policy: test {n} 'ü'",
                "at": now if n % 3 else None,
            }
            items.append((tenant_id, outcome))
    async with db.begin() as conn:
        raced = await outbox_db.record_sent(conn, items, now=now)
    position = {t: n for n, (t, _) in enumerate(tenants)}
    return sorted((position[t], p) for t, p in raced)


async def _record_sent_twins(db: Any, mixed: bool) -> None:
    queued = await _queued(db, 4)
    claim_at = utcnow() + dt.timedelta(seconds=1)
    record_at = claim_at + dt.timedelta(seconds=1)
    claimed = {}
    async with db.begin() as conn:
        for tenant_id, _ids in queued:
            claimed[tenant_id] = await outbox_db.claim(conn, tenant_id, NODE, limit=10, now=claim_at)
            await conn.execute(
                message_statuses.insert().values(
                    tenant_id=tenant_id,
                    message_id=None,
                    provider="business_api",
                    provider_message_id="wamid.3",
                    status="delivered",
                    created_at=claim_at,
                )
            )

    fast = await _record_sent(db, queued[:2], claimed, record_at, mixed)
    with sql.core_paths():
        core = await _record_sent(db, queued[2:], claimed, record_at, mixed)

    assert fast == [(0, "wamid.3"), (1, "wamid.3")]
    assert core == fast
    async with db.connect() as conn:
        states = [await _outbox_state(conn, t, ids, claim_at, record_at) for t, ids in queued]
    assert states[0][len(ITEMS) + 1][:5] == ("message", 1, "sent", "business_api", "wamid.1")
    assert states[1] == states[0]
    assert states[2] == states[0]
    assert states[3] == states[0]


async def test_record_sent_core_twin_matches_the_fast_path(db):
    """``record_sent`` (its fast path: one round trip for every tenant) and its Core twin (per tenant,
    ``record_outcomes``), on two tenants each."""
    await _record_sent_twins(db, mixed=False)


async def test_record_sent_core_twin_matches_the_fast_path_when_a_contact_gets_both_roads(db):
    """Both update the contact's ``conversations.provider_last`` per provider in the order of the
    providers' names: the last one wins on either path."""
    await _record_sent_twins(db, mixed=True)


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
) -> tuple[list[list[int]], list[dict[str, int] | None]]:
    seqs: list[list[int]] = []
    locked: list[dict[str, int] | None] = []
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


# ------------------------------------------------------------------------------ inbound messages

T1 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
T2 = T1 + dt.timedelta(seconds=2)


def _inbound(n: int, *, provider: str = "business_api", wa_id: str = "+49 151 0000001", **extra: Any) -> Any:
    return {
        "provider": provider,
        "provider_message_id": f"wamid.{n}=" if provider == "business_api" else f"3EB0{n:04d}",
        "wa_id": wa_id,
        "type": "text",
        "content": {"body": f"hi {n} 'q' \\ ünï 😀", "n": n},
        "provider_timestamp": T1 - dt.timedelta(seconds=10 - n),
        **extra,
    }


# Two deliveries: a batch with a duplicate inside it, a second contact (named with quotes), a Web
# message and an older timestamp out of order; then a redelivery of two of them with one new message.
FIRST = [
    _inbound(0, contact_name="Ana 'A' Ünï"),
    _inbound(1),
    _inbound(1),  # the same wamid twice in one batch: stored once
    _inbound(2, wa_id="4915100000002", contact_name="Bo \\ 😀"),
    _inbound(3, provider="web", wa_id="4915100000002"),
    {**_inbound(4), "provider_timestamp": T1 - dt.timedelta(minutes=5)},  # older than the others
    _inbound(5, contact_name=""),
]
SECOND = [_inbound(1), _inbound(3, provider="web", wa_id="4915100000002"), _inbound(6, contact_name=None)]


def _stored(rows: list[dict[str, Any]], convs: dict[int, str]) -> list[dict[str, Any]]:
    """``record_inbound_messages``' rows, message ids by their provider ids, conversations by wa_id
    (and without the tenant)."""
    out = []
    for r in rows:
        r = dict(r)
        r["id"] = r["provider_message_id"]
        del r["tenant_id"]
        r["conversation_id"] = convs[r["conversation_id"]]
        out.append(r)
    return out


async def _inbound_state(conn: Any, tenant_id: str) -> tuple[list[Any], list[Any], dict[int, str]]:
    """The tenant's messages and conversations, ids replaced by provider ids and wa_ids."""
    m, c = messages.c, conversations.c
    convs = {
        cid: wa for cid, wa in await conn.execute(sa.select(c.id, c.wa_id).where(c.tenant_id == tenant_id))
    }
    pmids = {
        mid: pmid
        for mid, pmid in await conn.execute(
            sa.select(m.id, m.provider_message_id).where(m.tenant_id == tenant_id)
        )
    }
    msgs = await conn.execute(
        sa.select(
            m.provider_message_id, m.conversation_id, m.direction, m.provider, m.type, m.content, m.status,
            m.error_code, m.error_message, m.created_at, m.updated_at, m.provider_timestamp,
        ).where(m.tenant_id == tenant_id)
    )  # fmt: skip
    cs = await conn.execute(
        sa.select(
            c.wa_id, c.contact_name, c.provider_last, c.last_inbound_at, c.last_message_at,
            c.last_message_id, c.unread_count, c.created_at, c.updated_at,
        ).where(c.tenant_id == tenant_id)
    )  # fmt: skip
    msg_rows = sorted((r[0], convs[r[1]], *r[2:]) for r in msgs)
    conv_rows = sorted((*r[:5], pmids.get(r[5]), *r[6:]) for r in cs)
    return msg_rows, conv_rows, convs


async def _record_inbound(db: Any, tenant_id: str, monkeypatch: Any, deferred: bool) -> list[Any]:
    from control_plane.db import inbound as inbound_db

    stored = []
    for now, items in ((T1, FIRST), (T2, SECOND)):
        monkeypatch.setattr(inbound_db, "utcnow", lambda now=now: now)
        async with db.begin() as conn:
            assert sql.raw_mariadb(conn) != sql.core_only(), "the fast path needs MariaDB >= 10.5"
            later: list[str] | None = [] if deferred else None
            stored.append(await inbound_db.record_inbound_messages(conn, tenant_id, items, deferred=later))
            if later is not None:
                await inbound_db.run_deferred(conn, later)
                assert later == []
    return stored


@pytest.mark.parametrize("deferred", [False, True], ids=["insert now", "insert deferred"])
async def test_record_inbound_messages_core_twin_matches_the_fast_path(db, monkeypatch, deferred):
    fast_tenant, core_tenant = await _tenants(db, 2)

    fast = await _record_inbound(db, fast_tenant, monkeypatch, deferred)
    with sql.core_paths():
        core = await _record_inbound(db, core_tenant, monkeypatch, deferred)

    async with db.connect() as conn:
        fast_msgs, fast_convs, fast_ids = await _inbound_state(conn, fast_tenant)
        core_msgs, core_convs, core_ids = await _inbound_state(conn, core_tenant)
    assert [len(batch) for batch in fast] == [6, 1]  # the duplicate and the redeliveries dropped
    assert [_stored(b, fast_ids) for b in fast] == [_stored(b, core_ids) for b in core]
    assert fast[0][0]["content"] == FIRST[0]["content"] and fast[0][0]["contact_name"] == "Ana 'A' Ünï"
    assert len(fast_msgs) == 7 and core_msgs == fast_msgs
    assert [(c[0], c[1], c[6]) for c in fast_convs] == [
        ("4915100000002", "Bo \\ 😀", 2),
        ("491510000001", "Ana 'A' Ünï", 5),
    ]
    assert core_convs == fast_convs


# --------------------------------------------------------------------------------- status facts


def _status_updates(ids: list[str]) -> list[dict[str, Any]]:
    """Facts for sent messages ``wamid.<index>``: delivered then read (given in reverse), a failure
    with its error, a fact that changes nothing, one for a wamid with no message yet, a repeat and
    an unknown status (ignored)."""
    at = T1 + dt.timedelta(minutes=1)

    def fact(n: int | str, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "business_api",
            "provider_message_id": f"wamid.{n}",
            "status": status,
            "occurred_at": at + dt.timedelta(seconds=len(status)),
            "recipient_id": "4915100000001",
            "raw": {"status": status, "n": n, "text": "'ü' \\"},
            **extra,
        }

    return [
        fact(1, "read"),
        fact(1, "delivered"),
        fact(3, "failed", error_code=131026, error_message="Message undeliverable 'ü'"),
        fact(5, "sent"),
        fact("nope", "delivered"),
        fact(1, "read"),
        fact(5, "deleted"),
    ]


async def _statuses_state(conn: Any, tenant_id: str, ids: list[str]) -> list[Any]:
    index = {m: n for n, m in enumerate(ids)}
    m, s = messages.c, message_statuses.c
    msgs = await conn.execute(
        sa.select(
            m.id, m.status, m.error_code, m.error_message, m.delivered_at, m.read_at, m.failed_at,
        ).where(m.tenant_id == tenant_id)
    )  # fmt: skip
    facts = await conn.execute(
        sa.select(
            s.message_id, s.provider, s.provider_message_id, s.status, s.occurred_at, s.recipient_id,
            s.error_code, s.error_message, s.raw,
        ).where(s.tenant_id == tenant_id)
    )  # fmt: skip
    return [
        *sorted(("message", index[r[0]], *r[1:]) for r in msgs),
        *sorted(("fact", index.get(r[0], -1), *r[1:]) for r in facts),  # -1: no message yet
    ]


async def _sent_then_statuses(db: Any, tenant_id: str, ids: list[str], now: dt.datetime) -> list[Any]:
    from control_plane.db import status_facts

    async with db.begin() as conn:
        claimed = await outbox_db.claim(conn, tenant_id, NODE, limit=10, now=now)
        sent = [
            {
                "kind": "sent",
                "message_id": r["message_id"],
                "provider": "business_api",
                "provider_message_id": f"wamid.{ids.index(r['message_id'])}",
                "conversation_id": r["conversation_id"],
                "reason": "policy: test",
                "at": now,
            }
            for r in claimed
        ]
        await outbox_db.record_sent(conn, [(tenant_id, o) for o in sent], now=now)
    async with db.begin() as conn:
        changes = await status_facts.apply_status_updates(conn, tenant_id, _status_updates(ids))
    out = []
    for change in changes:
        change = dict(change)
        change["message_id"] = ids.index(change["message_id"])
        del change["conversation_id"]
        per_tenant = ("id", "tenant_id", "conversation_id", "created_at", "updated_at")
        change["message"] = {k: v for k, v in change["message"].items() if k not in per_tenant}
        out.append(change)
    return out


async def test_status_updates_after_sends_match_on_the_core_paths(db):
    """Sends recorded (``record_sent``: its fast path, or its Core twin), then status facts applied
    (``status_facts.apply_status_updates``: Core on every database, no written-out twin yet; this
    pins the two modes to each other should one come)."""
    (fast_tenant, fast_ids), (core_tenant, core_ids) = await _queued(db, 2)
    now = utcnow() + dt.timedelta(seconds=1)

    fast = await _sent_then_statuses(db, fast_tenant, fast_ids, now)
    with sql.core_paths():
        core = await _sent_then_statuses(db, core_tenant, core_ids, now)

    assert [(c["message_id"], c["status"], c["changed"]) for c in fast] == [
        (1, "delivered", False),
        (1, "read", True),
        (3, "failed", True),
        (5, "sent", False),
    ]
    assert core == fast
    async with db.connect() as conn:
        fast_state = await _statuses_state(conn, fast_tenant, fast_ids)
        core_state = await _statuses_state(conn, core_tenant, core_ids)
    assert ("fact", -1, "business_api", "wamid.nope", "delivered") in [f[:5] for f in fast_state]
    assert core_state == fast_state
