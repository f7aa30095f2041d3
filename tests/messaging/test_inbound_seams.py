"""The seams behind every inbound and outcome writer, without a database: the group-commit loop
(``db.batch.GroupCommit``), the store-then-publish unit (``realtime.unit``), the per-tenant clock
and the Cloud delivery order."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from control_plane import errors
from control_plane.db.batch import GroupCommit
from control_plane.db.inbound import TenantClock, TenantWork
from control_plane.db.sql import is_deadlock
from control_plane.messaging.inbound_batch import per_tenant
from control_plane.realtime.envelopes import PreparedEvents
from control_plane.realtime.unit import store_then_publish

pytestmark = pytest.mark.smoke


class _DriverError(Exception):
    pass


def _deadlock() -> DBAPIError:
    return DBAPIError("INSERT", None, _DriverError(1213, "Deadlock found"))


async def test_group_commit_batches_in_order_and_resolves_after_the_store():
    stored: list[list[int]] = []
    gate = asyncio.Event()

    async def store(batch: list[int]) -> None:
        await gate.wait()
        stored.append(batch)

    writer: GroupCommit[int] = GroupCommit(store, name="t", max_batch=3)
    writer.start()
    first = asyncio.create_task(writer.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert not first.done()  # durable only after the store
    gate.set()
    await asyncio.gather(first, *rest)
    assert stored == [[0], [1, 2, 3], [4, 5]]
    assert writer.batches == 3 and writer.pending == 0
    await writer.stop()


async def test_group_commit_retries_a_deadlock_then_isolates_a_poisonous_item():
    calls: list[list[str]] = []

    async def store(batch: list[str]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise _deadlock()  # rolled back: the same batch again
        if "bad" in batch:
            raise ValueError("poison")

    writer: GroupCommit[str] = GroupCommit(store, name="t")
    writer.start()
    results = await asyncio.gather(
        writer.submit("a"), writer.submit("bad"), writer.submit("c"), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], errors.Unavailable) and results[1].code == "storage_failed"
    assert calls[0] == calls[1]  # the deadlock: tried again as it was
    assert ["a"] in calls and ["c"] in calls  # then one at a time
    await writer.stop()


async def test_group_commit_keeps_put_items_through_an_outage():
    down = True
    stored: list[str] = []

    async def store(batch: list[str]) -> None:
        if down:
            raise OperationalError("SELECT 1", None, _DriverError(2003, "Can't connect"))
        stored.extend(batch)

    writer: GroupCommit[str] = GroupCommit(store, name="t")
    writer.start()
    writer.put("kept-1")
    writer.put("kept-2")
    with pytest.raises(errors.Unavailable) as failed:
        await writer.submit("waited")
    assert failed.value.code == "database_unavailable"
    down = False
    assert await writer.flush(5)
    assert stored == ["kept-1", "kept-2"]  # in order, once the database is back
    await writer.stop()


async def test_group_commit_keeps_the_order_of_kept_items_after_a_failure():
    failures = {"b": 2}  # fails in its batch, then once alone: tried again, still before c and d
    stored: list[str] = []

    async def store(batch: list[str]) -> None:
        for item in batch:
            if failures.get(item):
                failures[item] -= 1
                raise ValueError("transient")
        stored.extend(batch)

    writer: GroupCommit[str] = GroupCommit(store, name="t")
    writer.start()
    for item in "abcd":
        writer.put(item)
    assert await writer.flush(5)
    assert stored == ["a", "b", "c", "d"]
    await writer.stop()


def test_is_deadlock():
    assert is_deadlock(_deadlock())
    assert not is_deadlock(DBAPIError("x", None, _DriverError(1062, "Duplicate")))


class _FakeLog:
    def __init__(self) -> None:
        self.appended: list[Any] = []
        self.emitted: list[Any] = []

    async def append_many(self, conn, events):
        self.appended.append(list(events))
        return self.prepare(events).envelopes(range(1, len(events) + 1))

    def prepare(self, events):
        return PreparedEvents(events)

    async def emit(self, envelopes):
        self.emitted.append([e["seq"] for e in envelopes])


@contextlib.asynccontextmanager
async def _transaction(log: list[str]):
    log.append("begin")
    try:
        yield "conn"
    except BaseException:
        log.append("rollback")
        raise
    log.append("commit")


async def test_store_then_publish_emits_only_after_the_commit():
    events, steps = _FakeLog(), []
    async with store_then_publish(_transaction(steps), events) as unit:
        assert unit.conn == "conn"
        unit.add("t1", "message.received", {"n": 1})
        unit.add("t1", "message.received", {"n": 2})
        assert events.emitted == [] and events.appended == []
    assert steps == ["begin", "commit"]
    assert events.emitted == [[1, 2]]

    events, steps = _FakeLog(), []
    with pytest.raises(RuntimeError):
        async with store_then_publish(_transaction(steps), events) as unit:
            unit.add("t1", "message.received", {"n": 1})
            raise RuntimeError("the transaction fails")
    assert steps == ["begin", "rollback"] and events.emitted == []


def test_tenant_clock_is_strictly_increasing_per_tenant():
    clock = TenantClock()
    now = dt.datetime(2025, 1, 1, 12, 0, 0)
    first = clock.stamps("a", 3, now)
    again = clock.stamps("a", 2, now)  # the same instant: after the previous ones
    other = clock.stamps("b", 1, now)
    stamps = first + again
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert other == [now]
    assert clock.stamps("a", 0, now) == []
    later = now + dt.timedelta(seconds=1)
    assert clock.stamps("a", 1, later) == [later]


def _cloud(wa_id: str, n: int, second: int) -> dict[str, Any]:
    return {
        "provider": "business_api",
        "provider_message_id": f"wamid.{wa_id}.{n}",
        "wa_id": wa_id,
        "provider_timestamp": dt.datetime(2025, 1, 1, 12, 0, second),
    }


def test_cloud_delivery_order_in_a_batch():
    """Within a delivery: its order, whatever the timestamps; between deliveries: the timestamp
    of each delivery's first message of the contact, then arrival."""
    a1, a2 = _cloud("1", 1, 5), _cloud("1", 2, 3)  # one delivery, listed newest first
    b1 = _cloud("1", 3, 4)
    c1 = _cloud("1", 4, 4)
    batch = [[TenantWork("t", [a1, a2])], [TenantWork("t", [b1])], [TenantWork("t", [c1])]]
    [(kind, items)] = per_tenant(batch)["t"].runs
    assert kind == "messages"
    assert [m["provider_message_id"] for m in items] == ["wamid.1.3", "wamid.1.4", "wamid.1.1", "wamid.1.2"]


def test_web_and_mixed_runs_keep_arrival_order():
    web = [{**_cloud("2", n, 9 - n), "provider": "web"} for n in range(3)]
    batch = [[TenantWork("t", [m])] for m in web]
    [(_, items)] = per_tenant(batch)["t"].runs
    assert items == web
    phone = {**_cloud("2", 9, 0), "provider": "web"}
    batch = [[TenantWork("t", [web[0]])], [TenantWork("t", phone=[phone])], [TenantWork("t", [web[1]])]]
    part = per_tenant(batch)["t"]
    assert [(kind, len(items)) for kind, items in part.runs] == [
        ("messages", 1),
        ("phone", 1),
        ("messages", 1),
    ]
