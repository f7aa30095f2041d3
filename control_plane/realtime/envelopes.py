"""Event envelopes and payload encoding: what the publisher and every writer of events share.

``Envelope``: ``{seq, tenant_id, type, ts, data}`` (``ts`` ISO 8601 UTC with milliseconds and a ``Z``),
keeping the JSON text of ``data`` so it is encoded once. ``PreparedEvents``: events checked, encoded
and stamped, waiting for their seqs (from the event log, inside the caller's transaction).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from collections.abc import Sequence
from typing import Any

from control_plane.compact_json import dict_encoder
from control_plane.db import events as events_db
from control_plane.db.engine import utcnow
from control_plane.events import FORBIDDEN_KEYS, format_ts

TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
TENANT_RE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")

NewEvent = tuple[str, str, dict[str, Any]] | tuple[str, str, dict[str, Any], str]
"""``(tenant_id, type, data)``, or with a 4th element: ``data``'s JSON text exactly as ``encode_data``
writes it (a writer that encodes a payload faster itself); it is stored as given."""


class Envelope(dict):
    """``{seq, tenant_id, type, ts, data}``; keeps the JSON text of ``data`` so it is encoded once."""

    __slots__ = ("data_json",)
    data_json: str


def now_ms() -> dt.datetime:
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # stored == sent, to the ms


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return value.hex
    raise TypeError(f"event data: {type(value).__name__} is not JSON serializable")


_encode = dict_encoder(_json_default)


def encode_data(data: dict[str, Any]) -> str:
    """Validate an event payload and return its JSON text."""
    if not isinstance(data, dict):
        raise TypeError("event data must be a dict")
    leaked = FORBIDDEN_KEYS.intersection(data)
    if leaked:
        raise ValueError(f"event data must not carry secrets: {sorted(leaked)}")
    return _encode(data)


def check_names(tenant_id: str, type_: str) -> None:
    if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    if not isinstance(type_, str) or len(type_) > 64 or not TYPE_RE.match(type_):
        raise ValueError(f"invalid event type {type_!r}; use dotted lower-case names like 'message.sent'")


def make_envelope(
    tenant_id: str, seq: int, type_: str, ts: dt.datetime, data: Any, data_json: str
) -> Envelope:
    env = Envelope(seq=seq, tenant_id=tenant_id, type=type_, ts=format_ts(ts), data=data)
    env.data_json = data_json
    return env


class PreparedEvents:
    """Events checked, encoded and stamped (one ``ts``), in order: ``rows`` go to the event log
    (``events_db.append_events``) inside the caller's transaction; ``envelopes(seqs)`` after it."""

    __slots__ = ("items", "ts")

    def __init__(self, events: Sequence[NewEvent]) -> None:
        self.ts = now_ms()
        items = []
        for event in events:
            tenant_id, type_, data = event[0], event[1], event[2]
            check_names(tenant_id, type_)
            # a 4-tuple carries its data already encoded
            items.append((tenant_id, type_, data, event[3] if len(event) > 3 else encode_data(data)))
        self.items = items

    @property
    def rows(self) -> list[events_db.NewEvent]:
        ts = self.ts
        return [(t, ty, ts, dj) for t, ty, _d, dj in self.items]

    def tenants(self) -> set[str]:
        return {item[0] for item in self.items}

    def envelopes(self, seqs: Sequence[int]) -> list[Envelope]:
        ts = self.ts
        return [
            make_envelope(t, seq, ty, ts, d, dj) for (t, ty, d, dj), seq in zip(self.items, seqs, strict=True)
        ]
