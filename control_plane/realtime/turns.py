"""How the publisher numbers its batches, and which tenants a batch holds back from later ones.

- Numbered in advance (MariaDB; the common case): once this process has read a tenant's counter, it
  numbers the tenant's events itself when it takes a batch, and sends the batch at once, in ONE
  round trip that the database checks (``EventLogWriter.append_predicted``: each counter must have
  been moved last by the batch the seqs were predicted after). The batch holds its tenants back
  only until its statements are written, so the next batch of theirs reaches the database after
  it; several batches of the same tenants are in flight together, and the row locks on the
  counters make the database commit them in order. A batch that fails the check (another node or
  a caller's transaction moved the counter, an earlier batch failed or reached the database late)
  is rolled back, waits for every earlier batch of its tenants, and is numbered the database's way.
- Numbered by the database (a tenant not known yet, after a failed check, SQLite, MySQL): a batch
  holds its tenants back from later batches until its counter upsert has returned (their counter
  rows are then locked by its transaction): a later batch with one of them is sent after that, so
  its upsert waits in the database for the earlier commit. The counters it reads make its tenants
  known again.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.realtime.publisher import EventPublisher


class Turn:
    """A batch's tenants, held back from later batches until its counter rows are locked."""

    __slots__ = ("held", "publisher", "tenants", "writer")

    def __init__(self, publisher: EventPublisher, tenants: set[str], writer: int) -> None:
        self.publisher, self.tenants, self.held, self.writer = publisher, tenants, False, writer
        self.hold_again()

    def release(self, last: dict[str, int] | None = None) -> None:
        """Let later batches of these tenants go (``last``: their counters, where known)."""
        if self.held:
            self.held = False
            self.publisher._let_go(self.tenants, last, self.writer)

    def hold_again(self) -> None:
        if not self.held:
            self.held = True
            count_up(self.publisher._sending, self.tenants)


class Kept:
    """A turn that stays held (the per-tenant fallback runs its groups one after another in it)."""

    held = True
    writer = None  # its groups are numbered by the database

    def release(self, last: dict[str, int] | None = None) -> None:
        pass


def count_up(counts: dict[str, int], keys: set[str]) -> None:
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


def count_down(counts: dict[str, int], keys: set[str]) -> None:
    """Each key once less; a key at zero goes (``key in counts`` means: at least one)."""
    for key in keys:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


def take_batch(
    pending: collections.deque,
    max_batch: int,
    writer: int,
    *,
    sending: dict[str, int],
    known: dict[str, tuple[int, int]],
    predicted_open: dict[str, int],
    predict: bool,
) -> tuple[list, list[int] | None, dict[str, int], collections.deque]:
    """Up to ``max_batch`` pending events, keeping each tenant's order; their predicted seqs
    (None: the database numbers them); when predicted, the token of the batch each tenant's seqs
    were predicted after; and what stays pending. One batch is all predicted or all not: a tenant
    held by an unlocked batch (``sending``) waits; a tenant whose counter is not ``known`` waits
    while predicted batches of it are in flight (a batch numbered by the database could overtake
    them). ``known`` is updated: each tenant's next seq and the batch (``writer``) that moves it."""
    batch: list = []
    held: collections.deque | None = None
    mode: bool | None = None  # True: predicted
    while pending and len(batch) < max_batch:
        entry = pending.popleft()
        tenant_id = entry[0]
        if tenant_id in sending:
            want = None
        elif predict and tenant_id in known:
            want = True
        elif tenant_id in predicted_open:
            want = None
        else:
            want = False
        if want is not None and mode is None:
            mode = want
        if want is None or want is not mode:
            if held is None:
                held = collections.deque()
            held.append(entry)
        else:
            batch.append(entry)
    if held is not None:
        held.extend(pending)
        pending = held
    if not mode:
        for entry in batch:  # numbered by the database: known again once its rows are locked
            known.pop(entry[0], None)
        return batch, None, {}, pending
    seqs = []
    after: dict[str, int] = {}
    for entry in batch:
        tenant_id = entry[0]
        seq, last_writer = known[tenant_id]
        if tenant_id not in after:
            after[tenant_id] = last_writer
        known[tenant_id] = (seq + 1, writer)
        seqs.append(seq)
    return batch, seqs, after, pending
