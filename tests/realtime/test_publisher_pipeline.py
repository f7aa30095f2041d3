"""The publisher's pipeline (several transactions in flight) against a stand-in event log that
numbers like the database does: seqs are settled when a batch's counter rows are locked
(``on_locked``), the commit answer comes later, and a batch that fails gives its seqs back; and,
for batches numbered in advance (predicted), checks them the way ``append_predicted`` does."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from control_plane import events as ev
from control_plane.db import events as events_db
from control_plane.realtime.publisher import EventPublisher

pytestmark = pytest.mark.smoke


class FakeLog:
    """One writer's connection. Shared ``counters`` play the counter rows: a batch waits until no
    earlier batch holding one of its tenants is still open (the row lock), then takes its seqs."""

    def __init__(self, shared: dict) -> None:
        self.shared = shared

    predicts = True

    async def _lock(self, tenants):
        shared = self.shared
        while tenants & shared["locked"]:  # another transaction holds one of these rows
            await asyncio.sleep(0)
        shared["locked"] |= tenants
        return dict(shared["counters"]), dict(shared["writers"])

    def _roll_back(self, tenants, counters, writers):
        for t in tenants:  # rolled back: the counters as they were
            self.shared["counters"][t] = counters.get(t, 0)
            self.shared["writers"][t] = writers.get(t)

    async def append(self, rows, *, on_locked=None, writer=None):
        shared = self.shared
        tenants = {r[0] for r in rows}
        start, writers = await self._lock(tenants)
        seqs = []
        for tenant_id, *_ in rows:
            shared["counters"][tenant_id] = shared["counters"].get(tenant_id, 0) + 1
            seqs.append(shared["counters"][tenant_id])
        for t in tenants:
            shared["writers"][t] = writer
        batch_no = shared["calls"]
        shared["calls"] += 1
        failure = shared["fail"].pop(batch_no, None)
        if on_locked is not None:
            on_locked({t: shared["counters"][t] for t in tenants})
        try:
            await asyncio.sleep(random.uniform(0, 0.004))  # COMMIT: answers come back in any order
            if failure is not None:
                self._roll_back(tenants, start, writers)
                raise failure
            return seqs
        finally:
            shared["locked"] -= tenants

    async def append_predicted(self, rows, seqs, *, writer, after, on_sent=None):
        """Like the database: reaches it after a while (a later batch may overtake it), locks,
        checks that each counter ends where ``seqs`` do and was last moved by ``after[t]``."""
        shared = self.shared
        tenants = {r[0] for r in rows}
        if on_sent is not None:
            asyncio.get_running_loop().call_soon(on_sent)
        await asyncio.sleep(random.uniform(0, 0.002))
        start, writers = await self._lock(tenants)
        try:
            last = {}
            for (tenant_id, *_), seq in zip(rows, seqs):
                last[tenant_id] = seq
            for t in tenants:
                shared["counters"][t] = start.get(t, 0) + sum(1 for r in rows if r[0] == t)
                shared["writers"][t] = writer
            batch_no = shared["calls"]
            shared["calls"] += 1
            if any(shared["counters"][t] != last[t] or writers.get(t) != after[t] for t in tenants):
                self._roll_back(tenants, start, writers)
                shared["mispredicted"] += 1
                raise events_db.CounterMoved(sorted(tenants))
            failure = shared["fail"].pop(batch_no, None)
            await asyncio.sleep(random.uniform(0, 0.004))  # COMMIT
            if failure is not None:
                self._roll_back(tenants, start, writers)
                raise failure
            return list(seqs)
        finally:
            shared["locked"] -= tenants

    async def close(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.got: list = []

    async def broadcast(self, envelopes) -> None:
        self.got.extend(envelopes)
        await asyncio.sleep(random.uniform(0, 0.002))


def deadlock() -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("event log append", None, Exception(1213, "Deadlock found"))


def make_publisher(
    shared: dict, sink: Sink, writers: int = 3, max_batch: int = 5, predicts: bool = False
) -> EventPublisher:
    publisher = EventPublisher(
        SimpleNamespace(is_sqlite=False), sink, max_batch=max_batch, commits_in_flight=writers
    )
    publisher._logs = [FakeLog(shared) for _ in range(writers)]
    publisher._predicts = predicts
    publisher.start()
    return publisher


def shared_state(**fail) -> dict:
    return {
        "counters": {},
        "writers": {},
        "locked": set(),
        "calls": 0,
        "mispredicted": 0,
        "fail": {int(k[1:]): v for k, v in fail.items()},
    }


def assert_emitted_in_order(sink: Sink, envs: list) -> None:
    last: dict[str, int] = {}
    for env in sink.got:  # per tenant: each seq once, in order, no gap
        assert env["seq"] == last.get(env["tenant_id"], 0) + 1, (env["tenant_id"], env["seq"], last)
        last[env["tenant_id"]] = env["seq"]
    assert sorted((e["tenant_id"], e["seq"]) for e in sink.got) == sorted(
        (e["tenant_id"], e["seq"]) for e in envs if isinstance(e, dict)
    )


async def test_pipelined_batches_number_in_call_order_and_emit_in_seq_order():
    random.seed(4)
    shared, sink = shared_state(), Sink()
    publisher = make_publisher(shared, sink)
    tenants = ["ta", "tb", "tc"]
    calls = []
    for i in range(300):
        calls.append(asyncio.ensure_future(publisher.publish(tenants[i % 3], ev.MESSAGE_SENT, {"n": i})))
        if i % 7 == 0:
            await asyncio.sleep(0)  # events keep arriving while batches are in flight
    envs = await asyncio.gather(*calls)
    await publisher.close()
    for t in tenants:
        mine = [e for e in envs if e["tenant_id"] == t]
        assert [e["seq"] for e in mine] == list(range(1, 101))  # call order
    assert shared["calls"] > 300 // 5  # batches of at most 5, several in flight
    assert_emitted_in_order(sink, envs)


class InlineSink(Sink):
    """A sink that delivers locally at once (``deliver_now``) and forwards to "other nodes" later."""

    def __init__(self) -> None:
        super().__init__()
        self.forwarded: list = []

    def deliver_now(self, envelopes):
        self.got.extend(envelopes)
        return [(e["tenant_id"], e["seq"]) for e in envelopes]

    async def forward(self, items) -> None:
        await asyncio.sleep(random.uniform(0, 0.002))
        self.forwarded.extend(items)


async def test_an_inline_sink_delivers_before_publish_returns_and_forwards_the_same_in_order():
    random.seed(7)
    shared, sink = shared_state(b3=deadlock()), InlineSink()
    publisher = make_publisher(shared, sink, predicts=True)

    async def publish_and_look(i: int):
        env = await publisher.publish(["ta", "tb"][i % 2], ev.MESSAGE_SENT, {"n": i})
        assert env in sink.got  # this node's clients had it by the time the caller heard "durable"
        return env

    results = await asyncio.gather(*(publish_and_look(i) for i in range(120)), return_exceptions=True)
    await publisher.close()
    assert_emitted_in_order(sink, results)
    assert sink.forwarded == [(e["tenant_id"], e["seq"]) for e in sink.got]  # other nodes: same order
    assert publisher.stats["emitted"] == len(sink.got)


async def test_a_batch_failing_after_the_next_was_sent_is_not_retried_and_leaves_no_gap():
    random.seed(5)
    shared, sink = shared_state(b0=deadlock()), Sink()
    publisher = make_publisher(shared, sink, max_batch=2)
    results = await asyncio.gather(
        *(publisher.publish("ta", ev.MESSAGE_SENT, {"n": i}) for i in range(6)), return_exceptions=True
    )
    await publisher.close()
    # Batch 0 (the first two) failed after batch 1 had been sent: retrying it would number its
    # events after later ones, so its callers get the error; the others take its seqs.
    assert all(isinstance(r, sa.exc.DBAPIError) for r in results[:2])
    assert [r["seq"] for r in results[2:]] == [1, 2, 3, 4]
    assert_emitted_in_order(sink, results)


async def test_a_failed_batch_is_retried_when_nothing_was_sent_after_it():
    shared, sink = shared_state(b0=deadlock()), Sink()
    publisher = make_publisher(shared, sink)
    env = await publisher.publish("ta", ev.MESSAGE_SENT, {"n": 1})
    await publisher.close()
    assert env["seq"] == 1 and shared["calls"] == 2
    assert [e["seq"] for e in sink.got] == [1]


@pytest.mark.parametrize("seed", range(6))
async def test_predicted_batches_overtaken_or_failed_renumber_in_call_order(seed):
    # Batches numbered in advance go without waiting for earlier ones; one that reaches the
    # "database" before an earlier one, or after one that failed, is rolled back and numbered
    # again, after every earlier batch of its tenants: call order, no gap, no duplicate.
    random.seed(seed)
    fail = {f"b{n}": deadlock() for n in random.sample(range(5, 60), 3)}
    shared, sink = shared_state(**fail), Sink()
    publisher = make_publisher(shared, sink, max_batch=4, predicts=True)
    tenants = ["ta", "tb", "tc", "td"]
    calls = []
    for i in range(400):
        calls.append(
            asyncio.ensure_future(
                publisher.publish(tenants[i % 4 if i % 5 else 0], ev.MESSAGE_SENT, {"n": i})
            )
        )
        if i % 3 == 0:
            await asyncio.sleep(0)
    results = await asyncio.gather(*calls, return_exceptions=True)
    await publisher.close()
    assert publisher.stats["predicted"] > 20  # most batches went numbered in advance
    assert shared["mispredicted"] > 0 and publisher.stats["mispredicted"] > 0
    envs = [r for r in results if isinstance(r, dict)]
    assert len(envs) >= 400 - 3 * 4  # only the batches that failed lost their callers
    for t in tenants:
        mine = [e["seq"] for e in envs if e["tenant_id"] == t]
        assert mine == list(range(1, len(mine) + 1))  # call order, gapless
        assert shared["counters"][t] == len(mine)
    assert_emitted_in_order(sink, envs)


async def test_the_websocket_writers_poll_keeps_engineio_contract():
    from engineio import exceptions as eio_exceptions

    from control_plane.realtime.transport import _FastPoll

    sock = SimpleNamespace(
        queue=asyncio.Queue(), server=SimpleNamespace(ping_interval=0.02, ping_timeout=0.01)
    )
    poll = _FastPoll(sock)
    for item in ("a", "b"):
        sock.queue.put_nowait(item)
    assert await poll() == ["a", "b"]  # everything queued, without waiting
    later = asyncio.get_running_loop().call_later(0.005, sock.queue.put_nowait, "c")
    assert await poll() == ["c"]  # waits for the next one
    later.cancel()
    with pytest.raises(eio_exceptions.QueueEmpty):  # none within ping_interval + ping_timeout
        await poll()
    sock.queue.put_nowait("d")
    sock.queue.put_nowait(None)
    assert await poll() == ["d"]  # the close marker stays queued for the next call
    assert await poll() == []
