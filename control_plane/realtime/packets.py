"""Socket.IO packet text for one event, built once per event and shared by every connection."""

from __future__ import annotations

from typing import Any

from control_plane.events import format_ts
from control_plane.realtime.publisher import Envelope

# One event to deliver: (tenant_id, seq, encoded Socket.IO packet text).
Item = tuple[str, int, str]


def encode_packet(tenant_id: str, seq: int, type_: str, ts: str, data_json: str) -> str:
    """The Socket.IO EVENT packet text for one envelope, built without re-encoding ``data``.
    (``2`` = EVENT on the default namespace; names are validated by the publisher.)"""
    return (
        f'2["{type_}",{{"seq":{seq},"tenant_id":"{tenant_id}","type":"{type_}","ts":"{ts}",'
        f'"data":{data_json}}}]'
    )


def envelope_item(env: Envelope) -> Item:
    return (
        env["tenant_id"],
        env["seq"],
        encode_packet(env["tenant_id"], env["seq"], env["type"], env["ts"], env.data_json),
    )


def row_item(row: dict[str, Any]) -> Item:
    return (
        row["tenant_id"],
        row["seq"],
        encode_packet(row["tenant_id"], row["seq"], row["type"], format_ts(row["ts"]), row["data"]),
    )
