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

ALL_TYPES: frozenset[str] = frozenset(
    {
        SESSION_STATE,
        SESSION_QR,
        MESSAGE_RECEIVED,
        MESSAGE_SENT,
        MESSAGE_STATUS,
        MESSAGE_FAILED,
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
    """``message.sent`` data for a message typed on the phone (Web) or in the WhatsApp Business app
    (Cloud API echoes): the outbound shape plus ``origin`` (the row's: ``"phone"`` when it has none),
    ``from``, ``type`` and ``content`` (the CRM has not seen it before)."""
    origin = row.get("origin") or ORIGIN_PHONE
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "provider": row["provider"],
        "direction": "outbound",
        "origin": origin,
        "from": row.get("from"),
        "to": row["wa_id"],
        "type": row["type"],
        "content": row["content"],
        "status": "sent",
        "provider_message_id": row["provider_message_id"],
        "timestamp": format_ts_or_none(row.get("provider_timestamp")),
        "error": None,
        "route_reason": BUSINESS_APP_ROUTE_REASON if origin == ORIGIN_BUSINESS_APP else PHONE_ROUTE_REASON,
    }


# -------------------------------------------------------------- provider notices (webhook fields)
# Business API webhook fields other than ``messages`` (``webhooks/fields.py`` builds their data;
# docs/EVENTS.md "Provider notices"). Published once per change Meta sends (a redelivery: nothing).

TEMPLATE_STATUS = "template.status"  # message_template_status_update
TEMPLATE_QUALITY = "template.quality"  # message_template_quality_update
TEMPLATE_CATEGORY = "template.category"  # template_category_update
ACCOUNT_UPDATE = "account.update"  # account_update (bans, restrictions, violations, reviews ...)
CONTACT_PREFERENCES = "contact.preferences"  # user_preferences (marketing stop / resume)
CALL_CONNECT = "call.connect"  # calls: a call's SDP offer (user-initiated) or answer
CALL_TERMINATE = "call.terminate"  # calls: a call ended (status COMPLETED / FAILED, duration)
CALL_STATUS = "call.status"  # calls: a business-initiated call's RINGING / ACCEPTED / REJECTED
CALL_UPDATE = "call.update"  # calls: any other call event Meta adds (``event`` names it)
PROVIDER_ERROR = "provider.error"  # a change's top-level ``errors`` (any field, messages included)

NOTICE_TYPES: frozenset[str] = frozenset(
    {
        TEMPLATE_STATUS,
        TEMPLATE_QUALITY,
        TEMPLATE_CATEGORY,
        ACCOUNT_UPDATE,
        CONTACT_PREFERENCES,
        CALL_CONNECT,
        CALL_TERMINATE,
        CALL_STATUS,
        CALL_UPDATE,
        PROVIDER_ERROR,
    }
)
ALL_TYPES = ALL_TYPES | NOTICE_TYPES

# ``origin`` of outbound messages the business wrote outside the gateway (messages.origin).
ORIGIN_PHONE = "phone"  # typed on the Web session's phone
ORIGIN_BUSINESS_APP = "business_app"  # typed in the WhatsApp Business app (smb_message_echoes)
BUSINESS_APP_ROUTE_REASON = "typed in the WhatsApp Business app"
# ------------------------------------------------------------------------- Web session notices
# What a WhatsApp Web session reports besides messages and their changes (bridge events group_join,
# group_leave, call, vote_update; docs/EVENTS.md "Web session: groups, calls, poll votes"). Ids are
# wa_ids: a phone number's digits, a group's ``<id>@g.us``, or ``<n>@lid`` for a contact WhatsApp
# Web knows only by that id.
GROUP_JOIN = "group.join"
GROUP_LEAVE = "group.leave"
CALL_INCOMING = "call.incoming"
POLL_VOTE = "poll.vote"
WEB_NOTICE_TYPES: frozenset[str] = frozenset({GROUP_JOIN, GROUP_LEAVE, CALL_INCOMING, POLL_VOTE})
ALL_TYPES = ALL_TYPES | WEB_NOTICE_TYPES


def group_event(
    conversation_id: int | None,
    group: str,
    reason: str,
    members: list[str],
    by: str | None,
    provider_event_id: str | None,
    at: dt.datetime | None,
) -> dict[str, Any]:
    """``group.join`` / ``group.leave`` data: ``members`` joined or left ``group`` (its conversation
    when the gateway has one); ``reason`` add|invite|linked_group_join, remove|leave; ``by`` the admin
    who added or removed them (null when they came or went themselves)."""
    return {
        "conversation_id": conversation_id,
        "group": group,
        "members": members,
        "by": by,
        "reason": reason,
        "provider": "web",
        "provider_event_id": provider_event_id,
        "timestamp": format_ts_or_none(at),
    }


def call_event(
    conversation_id: int | None,
    caller: str,
    call_id: str | None,
    video: bool,
    group: bool,
    at: dt.datetime | None,
) -> dict[str, Any]:
    """``call.incoming`` data: ``caller`` is calling the session's number (WhatsApp Web reports the
    offer only: not whether it was answered)."""
    return {
        "conversation_id": conversation_id,
        "from": caller,
        "call_id": call_id,
        "video": video,
        "group": group,
        "provider": "web",
        "timestamp": format_ts_or_none(at),
    }


def vote_event(
    conversation_id: int | None,
    message_id: str | None,
    provider_message_id: str,
    voter: str,
    options: list[dict[str, Any]],
    at: dt.datetime | None,
) -> dict[str, Any]:
    """``poll.vote`` data: ``voter``'s whole current choice on a poll (``options`` [{name, index}];
    [] = the vote was withdrawn); ``message_id`` the poll's message when the gateway stored it."""
    return {
        "conversation_id": conversation_id,
        "message_id": message_id,
        "provider_message_id": provider_message_id,
        "from": voter,
        "options": options,
        "provider": "web",
        "timestamp": format_ts_or_none(at),
    }


# ------------------------------------------------------------ changes to a stored message (edits, ...)
# message.edited / message.deleted / message.reaction: the changed message in the one message shape
# (docs/EVENTS.md), as the change left it, plus ONE extra key, ``change``. Built from the row that
# ``db.message_changes`` returns (columns read with ``row.get``: one added elsewhere is null until
# it exists).

MESSAGE_EDITED = "message.edited"
MESSAGE_DELETED = "message.deleted"
MESSAGE_REACTION = "message.reaction"
CHANGE_EVENT_TYPES = {"edit": MESSAGE_EDITED, "revoke": MESSAGE_DELETED, "reaction": MESSAGE_REACTION}
ALL_TYPES = ALL_TYPES | frozenset(CHANGE_EVENT_TYPES.values())


def changed_message_data(row: dict[str, Any]) -> dict[str, Any]:
    """The one message shape for a stored message row (``content`` and ``reactions`` decoded,
    ``wa_id`` and ``contact_name`` of its conversation added)."""
    inbound = row.get("direction") == "inbound"
    error = None
    if row.get("error_code") is not None or row.get("error_message") is not None:
        error = {"code": row.get("error_code"), "message": row.get("error_message")}
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "direction": row.get("direction"),
        "origin": row.get("origin") or ("contact" if inbound else "api"),
        "from": row.get("wa_id") if inbound else row.get("from"),
        "to": row.get("to") if inbound else row.get("wa_id"),
        "author": row.get("author"),
        "contact_name": row.get("contact_name"),
        "type": row.get("type"),
        "content": row.get("content"),
        "provider": row.get("provider"),
        "provider_message_id": row.get("provider_message_id"),
        "provider_user_id": row.get("provider_user_id"),
        "status": row.get("status"),
        "timestamp": format_ts_or_none(row.get("provider_timestamp")),
        "created_at": format_ts_or_none(row.get("created_at")),
        "edited_at": format_ts_or_none(row.get("edited_at")),
        "deleted_at": format_ts_or_none(row.get("deleted_at")),
        "error": error,
        "route_reason": row.get("route_reason"),
        "reactions": row.get("reactions") or [],
    }


def change_event(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(type, data)`` for one applied change (``db.message_changes.record_changes`` result):
    ``message.edited`` ``change: {previous_content, at}``, ``message.deleted`` ``change: {at, by}``,
    ``message.reaction`` ``change: {from, emoji, removed, at}`` (a removal names the emoji removed)."""
    kind, at = result["kind"], format_ts(result["at"])
    if kind == "edit":
        change: dict[str, Any] = {"previous_content": result.get("previous_content"), "at": at}
    elif kind == "revoke":
        change = {"at": at, "by": result.get("actor")}
    else:
        removed = bool(result.get("removed"))
        change = {"from": result.get("actor"), "emoji": result.get("emoji"), "removed": removed, "at": at}
    return CHANGE_EVENT_TYPES[kind], {**changed_message_data(result["message"]), "change": change}


def change_events(tenant_id: str, results: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(tenant_id, type, data)`` per applied change, in order."""
    return [(tenant_id, *change_event(result)) for result in results]
