"""``message.received`` data and its JSON text for a fast-path row, built in one go.

The webhook writer's fast path (``messaging/inbound.py``) stores rows ``db.inbound._inbound_rows``
makes: their keys are fixed, none of the columns other features add (``origin``, ``edited_at``,
``deleted_at``, ``reactions``, ``message_id``) is there. For those rows the message shape is read
with plain indexing and written out by the C string encoder while its values are at hand, instead
of ``events.message_data``'s generic reads (about 20 ``dict.get``) and a second pass over the dict
for the JSON. The result is the same dict and the same characters as ``events.received_event`` +
``events.received_event_json`` (``tests/webhooks/test_fast_encoding.py`` compares them); any other
row, or a value of an unexpected type, takes that generic way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from control_plane import events as event_types

_s = json.encoder.encode_basestring  # the C one: non-ASCII kept
_format_ts = event_types.format_ts
_format_ts_us = event_types.format_ts_us
# Keys a fast-path row never has; a row with one is described by the generic code.
_OTHER_KEYS = ("message_id", "origin", "edited_at", "deleted_at", "reactions", "sent_at")


def received(
    row: dict[str, Any], to: str | None, encode: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Any], str]:
    """(``received_event(row, to)``, its JSON text as ``encode`` writes it) for a stored inbound row."""
    if (
        row["direction"] != "inbound"
        or type(row["conversation_id"]) is not int
        or "_content" not in row
        or any(k in row for k in _OTHER_KEYS)
    ):
        return _generic(row, to, encode)
    mid, conv, provider, wa_id = row["id"], row["conversation_id"], row["provider"], row["wa_id"]
    author, name, kind, pmid = row["author"], row["contact_name"], row["type"], row["provider_message_id"]
    user_id, at, created = row["provider_user_id"], row["provider_timestamp"], row["created_at"]
    ts = None if at is None else _format_ts(at)
    iso = row.get("_created_iso")  # its digits, written once with the row (db.inbound._inbound_rows)
    if iso is not None and created.year >= 1000 and created.tzinfo is None:
        created_at: str | None = iso + "Z"
    else:
        created_at = None if created is None else _format_ts_us(created)
    data = {
        "message_id": mid,
        "conversation_id": conv,
        "provider": provider,
        "direction": "inbound",
        "origin": "contact",
        "from": wa_id,
        "to": to,
        "author": author,
        "contact_name": name,
        "type": kind,
        "content": row["_content"],
        "status": "received",
        "provider_message_id": pmid,
        "provider_user_id": user_id,
        "timestamp": ts,
        "created_at": created_at,
        "edited_at": None,
        "deleted_at": None,
        "error": None,
        "route_reason": None,
        "reactions": [],
    }
    if type(mid) is not str or type(kind) is not str:
        return data, encode(data)
    try:
        text = (
            f'{{"message_id":{_s(mid)},"conversation_id":{conv},"provider":{_n(provider)},'
            f'"direction":"inbound","origin":"contact","from":{_n(wa_id)},"to":{_n(to)},'
            f'"author":{_n(author)},"contact_name":{_n(name)},"type":{_s(kind)},'
            f'"content":{row["content"]},"status":"received","provider_message_id":{_n(pmid)},'
            f'"provider_user_id":{_n(user_id)},"timestamp":{_n(ts)},"created_at":{_n(created_at)},'
            '"edited_at":null,"deleted_at":null,"error":null,"route_reason":null,"reactions":[]}'
        )
    except TypeError:  # a value that is neither a string nor None: the generic encoder decides
        return data, encode(data)
    return data, text


def _n(value: Any) -> str:
    """A string or null, as the JSON encoder writes it (TypeError for anything else)."""
    if type(value) is str:
        return _s(value)
    if value is None:
        return "null"
    raise TypeError


def _generic(
    row: dict[str, Any], to: str | None, encode: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Any], str]:
    data = event_types.received_event(row, to)
    return data, event_types.received_event_json(data, row["content"], encode)
