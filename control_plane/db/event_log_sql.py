"""The event log's statements on MariaDB/MySQL, written out with the values inlined (``db.sql``).

SQLAlchemy's multi-VALUES construct compiles afresh for every batch size and costs more CPU than
the insert itself; these strings are built in well under a microsecond per event. Tenant ids and
types are names checked here (:func:`check_names`), written as plain literals; payloads are
``sql.literal_str``'s literals (JSON between quotes when it holds no quote or backslash, else
hex); timestamps ``sql.literal_dt``, once per distinct value. Tenants are always listed in sorted
order: one lock order for every writer, so batches cannot deadlock on each other's counter rows.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence

from control_plane.db.sql import literal_dt, literal_str

# One event to insert: (tenant_id, type, ts, data_json). Seqs are assigned in input order per tenant.
NewEvent = tuple[str, str, dt.datetime, str]

# SET goes left to right: prev_writer takes the writer before it is replaced.
COUNTER_MOVE = (
    "ON DUPLICATE KEY UPDATE prev_writer = writer, writer = VALUES(writer), "
    "last_seq = last_seq + VALUES(last_seq)"
)
INSERT = "INSERT INTO event_log (tenant_id, seq, type, ts, data) VALUES "
OUT_OF_RANGE = 1690  # "BIGINT value is out of range": a predicted append's check failed
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_.:-]{1,64}\Z")  # nothing to escape: a plain literal


def check_names(names: Iterable[str], what: str = "tenant id or type") -> None:
    for name in names:
        if not _SAFE_NAME.match(name):
            raise ValueError(f"event log: invalid {what} {name!r}")


def _stamps(events: Sequence[NewEvent]) -> dict[dt.datetime, str]:
    """Each distinct timestamp's literal (a batch's events mostly share their millisecond)."""
    return {ts: literal_dt(ts) for ts in {e[2] for e in events}}


# Where ``one_trip``'s statements answer: the insert's row count, the counters as left.
ONE_TRIP_INSERT, ONE_TRIP_COUNTERS = 2, 3


def one_trip(events: Sequence[NewEvent], counts: dict[str, int]) -> list[str]:
    """One transaction's statements (the caller adds COMMIT, or not): the counter upsert; each
    tenant's counter as the upsert left it, read into a session variable (``@gw_seq0``, ``@gw_seq1``
    ... in tenant order: a consistent read, which sees this transaction's own upsert); ONE plain
    multi-row INSERT, each event's seq computed by the server from its tenant's variable
    (``@gw_seqN - back``, ``back`` counting from the tenant's last event in this batch); the
    counters as left (``ONE_TRIP_INSERT``, ``ONE_TRIP_COUNTERS``: those two statements' places).
    A plain VALUES list costs MariaDB about a third less CPU per event than the INSERT ... SELECT
    over a derived table of one SELECT per event joined to the counters that it replaces."""
    tenant_ids = sorted(counts)
    check_names((*tenant_ids, *{e[1] for e in events}))
    upsert = (
        "INSERT INTO tenant_event_seq (tenant_id, last_seq) VALUES "
        + ",".join(f"('{t}',{counts[t]})" for t in tenant_ids)
        + " "
        + COUNTER_MOVE
    )
    slots = {t: f"@gw_seq{i}" for i, t in enumerate(tenant_ids)}
    read = "SET " + ",".join(
        f"{slots[t]} = (SELECT last_seq FROM tenant_event_seq WHERE tenant_id = '{t}')" for t in tenant_ids
    )
    stamps = _stamps(events)
    remaining = dict(counts)
    rows: list[str] = []
    for tenant_id, type_, ts, data in events:
        back = remaining[tenant_id] = remaining[tenant_id] - 1
        rows.append(f"('{tenant_id}',{slots[tenant_id]}-{back},'{type_}',{stamps[ts]},{literal_str(data)})")
    select = "SELECT tenant_id, last_seq FROM tenant_event_seq WHERE tenant_id IN ({})".format(
        ",".join(f"'{t}'" for t in tenant_ids)
    )
    return [upsert, read, INSERT + ",".join(rows), select]


def upsert_and_read(counts: dict[str, int], writer: int | None = None) -> list[str]:
    """The counter upsert, then the counters as this transaction left them as ONE row of text,
    ``tenant last_seq;...;`` (one row to parse in the driver instead of one per tenant)."""
    tenant_ids = sorted(counts)
    check_names(tenant_ids, "tenant id")
    token = "NULL" if writer is None else str(int(writer))
    return [
        "INSERT INTO tenant_event_seq (tenant_id, last_seq, writer) VALUES "
        + ",".join(f"('{t}',{counts[t]},{token})" for t in tenant_ids)
        + " "
        + COUNTER_MOVE,
        "SELECT GROUP_CONCAT(tenant_id, ' ', last_seq, ';' SEPARATOR '') FROM tenant_event_seq "
        "WHERE tenant_id IN (" + ",".join(f"'{t}'" for t in tenant_ids) + ")",
    ]


def parse_counters(text: str | bytes | None, expected: int) -> dict[str, int]:
    """``upsert_and_read``'s row: each tenant's counter."""
    pairs = (text.decode() if isinstance(text, bytes) else text or "").split(";")
    if pairs.pop() != "" or len(pairs) != expected:  # cut short (group_concat_max_len)
        raise RuntimeError("event log: the counters could not be read back")
    last = {}
    for pair in pairs:
        tenant_id, _, value = pair.partition(" ")
        last[tenant_id] = int(value)
    return last


def row_tails(events: Sequence[NewEvent]) -> list[str]:
    """Each event's row of the plain multi-row INSERT but its tenant and seq: ``,'type',ts,data)``."""
    check_names({e[1] for e in events}, "type")
    stamps = _stamps(events)
    return [f",'{type_}',{stamps[ts]},{literal_str(data)})" for _t, type_, ts, data in events]


def insert_rows(events: Sequence[NewEvent], seqs: Iterable[int], tails: Sequence[str]) -> str:
    """The plain multi-row INSERT with the seqs inlined (``tails`` from :func:`row_tails`; tenant ids
    checked by the caller's counter upsert)."""
    return INSERT + ",".join(
        [f"('{e[0]}',{seq}{tail}" for e, seq, tail in zip(events, seqs, tails, strict=True)]
    )


def predicted_upsert(last: dict[str, int], writer: int, after: dict[str, int]) -> str:
    """The counter upsert of a predicted append, with its check: a counter last moved by the batch
    predicted after (``after[tenant]``) is set to where this batch ends (``last[tenant]``); any other
    is pushed past BIGINT's range, an error (:data:`OUT_OF_RANGE`) that stops the statements after
    it (IF evaluates only the branch it takes). Moved last by that batch means it committed and
    nobody moved the counter since, so it stands where that batch ended and these seqs follow it
    (by induction back to a counter the database numbered and this process read under its row lock).
    """
    tenant_ids = sorted(last)
    check_names(tenant_ids, "tenant id")
    token = int(writer)
    return (
        "INSERT INTO tenant_event_seq (tenant_id, last_seq, writer, prev_writer) VALUES "
        + ",".join(f"('{t}',{int(last[t])},{token},{int(after[t])})" for t in tenant_ids)
        + " ON DUPLICATE KEY UPDATE last_seq = IF(writer <=> VALUES(prev_writer), VALUES(last_seq), "
        "last_seq + 9223372036854775807), prev_writer = writer, writer = VALUES(writer)"
    )
