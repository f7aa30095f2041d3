"""Event names the CRM receives, the Socket.IO room names and the one timestamp format of events and
API answers. The bottom layer: standard library only, imported by everyone.

Payload shapes are documented in ``docs/EVENTS.md``; add a name here and a section there together.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

SESSION_STATE = "session.state"
SESSION_QR = "session.qr"
MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
MESSAGE_STATUS = "message.status"
MESSAGE_FAILED = "message.failed"
CONVERSATION_MERGED = "conversation.merged"

ALL_TYPES: frozenset[str] = frozenset(
    {
        SESSION_STATE,
        SESSION_QR,
        MESSAGE_RECEIVED,
        MESSAGE_SENT,
        MESSAGE_STATUS,
        MESSAGE_FAILED,
        CONVERSATION_MERGED,
    }
)

# Every tenant's events also go to this room (admin subscriptions to "all tenants").
ALL_ROOM = "tenants:all"
_TENANT_ROOM_PREFIX = "tenant:"

# Keys that must never appear at the top level of a payload (secrets stay out of the event log).
FORBIDDEN_KEYS: frozenset[str] = frozenset(
    {
        "api_key",
        "access_token",
        "app_secret",
        "verify_token",
        "secret_key",
        "admin_token",
        "password",
    }
)


def tenant_room(tenant_id: str) -> str:
    """The room every subscriber of one tenant joins."""
    return _TENANT_ROOM_PREFIX + tenant_id


def tenant_of_room(room: str) -> str | None:
    """The tenant id a room name belongs to, or None for other rooms."""
    if room.startswith(_TENANT_ROOM_PREFIX):
        return room[len(_TENANT_ROOM_PREFIX) :]
    return None


def format_ts(ts: dt.datetime) -> str:
    """UTC datetime (naive means UTC) -> ``2025-01-31T12:00:00.123Z``: milliseconds, always."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    if ts.year >= 1000:  # isoformat is C and several times faster than strftime
        return ts.isoformat(timespec="milliseconds") + "Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def format_ts_or_none(ts: dt.datetime | None) -> str | None:
    return None if ts is None else format_ts(ts)


# ------------------------------------------------------------------------------------ message payloads
# The data of the message events (docs/EVENTS.md), one builder per shape, shared by every writer.

PHONE_ROUTE_REASON = "typed on the phone"
_encode_str = json.encoder.encode_basestring  # the C one: non-ASCII kept


def received_event(row: dict[str, Any], to: str | None = None) -> dict[str, Any]:
    """``message.received`` data (the same shape for both providers) from a stored inbound row."""
    # A fast-path row keeps the content object aside (its "content" is the stored JSON text).
    content = row["_content"] if "_content" in row else row["content"]
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "provider": row["provider"],
        "direction": "inbound",
        "from": row["wa_id"],
        "to": to,
        "contact_name": row.get("contact_name"),
        "type": row["type"],
        "content": content,
        "status": "received",
        "provider_message_id": row["provider_message_id"],
        "timestamp": format_ts_or_none(row.get("provider_timestamp")),
    }


def _json_str(value: Any) -> str:
    if type(value) is str:
        return _encode_str(value)
    if value is None:
        return "null"
    raise TypeError  # anything else: the generic encoder decides


def received_event_json(
    data: dict[str, Any], content_json: str, encode: Callable[[dict[str, Any]], str]
) -> str:
    """``encode(data)`` for ``received_event``'s data, character for character, ~4x faster: the shape
    is fixed and ``content_json`` is the content's JSON text as the messages row stores it (the same
    separators, non-ASCII kept). Anything unexpected in a field goes through ``encode`` (the
    publisher's ``encode_data``)."""
    try:
        if type(data["conversation_id"]) is not int:
            raise TypeError
        return (
            f'{{"message_id":{_json_str(data["message_id"])},"conversation_id":{data["conversation_id"]},'
            f'"provider":{_json_str(data["provider"])},"direction":"inbound",'
            f'"from":{_json_str(data["from"])},"to":{_json_str(data["to"])},'
            f'"contact_name":{_json_str(data["contact_name"])},"type":{_json_str(data["type"])},'
            f'"content":{content_json},"status":"received",'
            f'"provider_message_id":{_json_str(data["provider_message_id"])},'
            f'"timestamp":{_json_str(data["timestamp"])}}}'
        )
    except TypeError:
        return encode(data)


def status_event(change: dict[str, Any]) -> dict[str, Any]:
    """``message.status`` / ``message.failed`` data from a status change (``apply_status_updates``)."""
    error = None
    if change["status"] == "failed":
        error = {"code": change.get("error_code"), "message": change.get("error_message")}
    return {
        "message_id": change["message_id"],
        "conversation_id": change["conversation_id"],
        "provider": change["provider"],
        "direction": "outbound",
        "to": change.get("recipient_id"),
        "status": change["status"],
        "provider_message_id": change["provider_message_id"],
        "timestamp": format_ts_or_none(change.get("occurred_at")),
        "error": error,
    }


def status_data(
    row: dict[str, Any], status: str, at: dt.datetime | None, code: Any, message: str | None
) -> dict[str, Any]:
    """``status_event`` for a message row (``id``) or a send's outcome (``message_id``), with
    ``conversation_id`` and ``wa_id``."""
    return status_event(
        {
            "message_id": row.get("message_id") or row.get("id"),
            "conversation_id": row.get("conversation_id"),
            "provider": row.get("provider"),
            "provider_message_id": row.get("provider_message_id"),
            "status": status,
            "occurred_at": at,
            "recipient_id": row.get("wa_id"),
            "error_code": code,
            "error_message": message,
        }
    )


def status_events(tenant_id: str, changes: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(tenant_id, type, data)`` for the status changes that moved a message: ``message.status``,
    plus ``message.failed`` for a failure."""
    out = []
    for change in changes:
        if not change["changed"]:
            continue  # a late 'delivered' after 'read': recorded, but nothing moved
        data = status_event(change)
        out.append((tenant_id, MESSAGE_STATUS, data))
        if change["status"] == "failed":
            out.append((tenant_id, MESSAGE_FAILED, data))
    return out


def phone_sent_event(row: dict[str, Any]) -> dict[str, Any]:
    """``message.sent`` data for a message typed on the phone (Web): the outbound shape plus
    ``origin: "phone"``, ``from``, ``type`` and ``content`` (the CRM has not seen it before)."""
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "provider": row["provider"],
        "direction": "outbound",
        "origin": "phone",
        "from": row.get("from"),
        "to": row["wa_id"],
        "type": row["type"],
        "content": row["content"],
        "status": "sent",
        "provider_message_id": row["provider_message_id"],
        "timestamp": format_ts_or_none(row.get("provider_timestamp")),
        "error": None,
        "route_reason": PHONE_ROUTE_REASON,
    }
