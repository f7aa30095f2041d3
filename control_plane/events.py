"""Event names the CRM receives, the Socket.IO room names and the one timestamp format of events and
API answers. The bottom layer: standard library only, imported by everyone.

Payload shapes are documented in ``docs/EVENTS.md``; add a name here and a section there together.
The message events share one shape, built here (``message_data``) and defined by the JSON Schema
``schemas/message.schema.json`` (published in the OpenAPI document).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SESSION_STATE = "session.state"
SESSION_QR = "session.qr"
MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
MESSAGE_STATUS = "message.status"
MESSAGE_FAILED = "message.failed"
MESSAGE_EDITED = "message.edited"
MESSAGE_DELETED = "message.deleted"
MESSAGE_REACTION = "message.reaction"
CONVERSATION_MERGED = "conversation.merged"

ALL_TYPES: frozenset[str] = frozenset(
    {
        SESSION_STATE,
        SESSION_QR,
        MESSAGE_RECEIVED,
        MESSAGE_SENT,
        MESSAGE_STATUS,
        MESSAGE_FAILED,
        MESSAGE_EDITED,
        MESSAGE_DELETED,
        MESSAGE_REACTION,
        CONVERSATION_MERGED,
    }
)

MESSAGE_SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "message.schema.json"
# Each message event type's payload schema: a name under the message schema's ``$defs`` (and under
# the OpenAPI document's ``components.schemas``).
MESSAGE_EVENT_SCHEMAS: dict[str, str] = {
    MESSAGE_RECEIVED: "MessageReceivedEvent",
    MESSAGE_SENT: "MessageSentEvent",
    MESSAGE_STATUS: "MessageStatusEvent",
    MESSAGE_FAILED: "MessageFailedEvent",
    MESSAGE_EDITED: "MessageEditedEvent",
    MESSAGE_DELETED: "MessageDeletedEvent",
    MESSAGE_REACTION: "MessageReactionEvent",
}

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


# format_ts of naive whole-second times (Meta's provider times: a batch's messages share a few, often
# the same objects, ``payload.unix_ts``). Cleared when full.
_FORMATTED: dict[dt.datetime, str] = {}
_FORMATTED_MAX = 4096


def format_ts(ts: dt.datetime) -> str:
    """UTC datetime (naive means UTC) -> ``2025-01-31T12:00:00.123Z``: milliseconds, always."""
    if type(ts) is dt.datetime and ts.tzinfo is None and not ts.microsecond:
        text = _FORMATTED.get(ts)
        if text is None:
            if len(_FORMATTED) >= _FORMATTED_MAX:
                _FORMATTED.clear()
            text = _FORMATTED[ts] = _format_ts(ts)
        return text
    return _format_ts(ts)


def _format_ts(ts: dt.datetime) -> str:
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    if ts.year >= 1000:  # isoformat is C and several times faster than strftime
        # without timespec (a keyword costs more than the slice): "...:SS" or "...:SS.ffffff"
        iso = ts.isoformat()
        return iso[:-3] + "Z" if ts.microsecond else iso + ".000Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def format_ts_or_none(ts: dt.datetime | None) -> str | None:
    return None if ts is None else format_ts(ts)


def format_ts_us(ts: dt.datetime) -> str:
    """``format_ts`` with microseconds: ``created_at``, the gateway's own stamp, increasing within a
    tenant (``db.inbound.TenantClock``) down to the microsecond, so a CRM can sort by it."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    if ts.year >= 1000:
        return ts.isoformat() + "Z" if ts.microsecond else ts.isoformat() + ".000000Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_schema() -> dict[str, Any]:
    """The message shape's JSON Schema (draft 2020-12, ``schemas/message.schema.json``): the message
    object, and per event type (``MESSAGE_EVENT_SCHEMAS``) the payload of its events. A fresh copy."""
    schema: dict[str, Any] = json.loads(MESSAGE_SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


# ------------------------------------------------------------------------------------ message payloads
# The message shape (docs/EVENTS.md, "Message object"; schemas/message.schema.json): ONE builder,
# ``message_data``, makes the data of every message.* event and the REST message object from a stored
# message row. Every key is present, null where it has no value.

PHONE_ROUTE_REASON = "typed on the phone"
_ROW: Any = object()  # message_data(timestamp=...): the row's own time
_encode_str = json.encoder.encode_basestring  # the C one: non-ASCII kept


def strip_inline_media(content: Any) -> Any:
    """Inline media bytes (``base64``) are never echoed back: they can be megabytes."""
    if isinstance(content, dict) and isinstance(content.get("base64"), str):
        content = {**content, "base64": f"<{len(content['base64']) * 3 // 4} bytes>"}
    return content


def message_error(code: Any, message: str | None) -> dict[str, Any]:
    """The ``error`` object: ``{code, message}`` (codes are strings: Meta's numbers too)."""
    return {"code": None if code is None else str(code), "message": message}


def message_origin(row: Mapping[str, Any]) -> str:
    """Who wrote it: the row's ``origin`` where stored, else ``contact`` for inbound; an outbound row
    with the provider's time was typed on the phone (only those have one); else the CRM's (``api``)."""
    origin = row.get("origin")
    if origin:
        return str(origin)
    if row["direction"] == "inbound":
        return "contact"
    return "phone" if row.get("provider_timestamp") is not None else "api"


def _reactions(value: Any) -> list[Any]:
    """The ``reactions`` list (a JSON text where a row stores it so)."""
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return list(value)


def message_data(
    row: Mapping[str, Any],
    *,
    business: str | None = None,
    status: str | None = None,
    timestamp: dt.datetime | None = _ROW,
    error: dict[str, Any] | None = None,
    route_reason: str | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    """The message shape of a stored message ``row``: ``id`` (or ``message_id``), ``conversation_id``,
    ``direction``, ``provider``, ``provider_message_id``, ``type``, ``content`` (decoded; a fast-path
    row keeps it in ``_content``), ``status``, ``created_at``, ``provider_timestamp``/``sent_at``,
    ``wa_id`` (the contact) and ``contact_name``; the columns other features add (``origin``,
    ``author``, ``provider_user_id``, ``edited_at``, ``deleted_at``, ``reactions``) where present.

    ``business``: the business's number (``to`` of inbound, ``from`` of outbound), when known.
    ``status``/``timestamp``: what the payload reports (a status event: that status and its time);
    by default the row's status and its provider time (else when the provider accepted it)."""
    get = row.get
    direction = row["direction"]
    content = row["_content"] if "_content" in row else get("content")
    contact = get("wa_id")
    if direction == "inbound":
        sender, recipient = contact, business
    else:
        sender, recipient = business, contact
        content = strip_inline_media(content)
    if timestamp is _ROW:
        timestamp = get("provider_timestamp") or get("sent_at")
    created, edited, deleted, reactions = (
        get("created_at"),
        get("edited_at"),
        get("deleted_at"),
        get("reactions"),
    )
    return {
        "message_id": get("message_id") or row["id"],
        "conversation_id": row["conversation_id"],
        "provider": get("provider"),
        "direction": direction,
        "origin": origin or message_origin(row),
        "from": sender,
        "to": recipient,
        "author": get("author"),
        "contact_name": get("contact_name"),
        "type": row["type"],
        "content": content,
        "status": status or row["status"],
        "provider_message_id": get("provider_message_id"),
        "provider_user_id": get("provider_user_id"),
        "timestamp": None if timestamp is None else format_ts(timestamp),
        "created_at": None if created is None else format_ts_us(created),
        "edited_at": None if edited is None else format_ts(edited),
        "deleted_at": None if deleted is None else format_ts(deleted),
        "error": error,
        "route_reason": route_reason,
        "reactions": _reactions(reactions) if reactions else [],
    }


def received_event(row: dict[str, Any], to: str | None = None) -> dict[str, Any]:
    """``message.received`` data (the same shape for both providers) from a stored inbound row;
    ``to``: the business's number the message was sent to."""
    return message_data(row, business=to, status="received", timestamp=row.get("provider_timestamp"))


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
    publisher's ``encode_data``): the strings are written by the C encoder in line, which raises
    TypeError on anything that is not a string."""
    d, s = data, _encode_str
    try:
        if type(d["conversation_id"]) is not int or d["direction"] != "inbound" or d["status"] != "received":
            raise TypeError
        if d["reactions"] != [] or type(d["reactions"]) is not list or d["error"] is not None:
            raise TypeError
        return (
            f'{{"message_id":{s(d["message_id"])},"conversation_id":{d["conversation_id"]},'
            f'"provider":{_json_str(d["provider"])},"direction":"inbound",'
            f'"origin":{s(d["origin"])},"from":{_json_str(d["from"])},"to":{_json_str(d["to"])},'
            f'"author":{"null" if (v := d["author"]) is None else s(v)},'
            f'"contact_name":{"null" if (v := d["contact_name"]) is None else s(v)},'
            f'"type":{s(d["type"])},"content":{content_json},"status":"received",'
            f'"provider_message_id":{_json_str(d["provider_message_id"])},'
            f'"provider_user_id":{"null" if (v := d["provider_user_id"]) is None else s(v)},'
            f'"timestamp":{_json_str(d["timestamp"])},"created_at":{_json_str(d["created_at"])},'
            f'"edited_at":{"null" if (v := d["edited_at"]) is None else s(v)},'
            f'"deleted_at":{"null" if (v := d["deleted_at"]) is None else s(v)},'
            f'"error":null,"route_reason":{"null" if (v := d["route_reason"]) is None else s(v)},'
            '"reactions":[]}'
        )
    except TypeError:
        return encode(data)


def status_event(change: dict[str, Any]) -> dict[str, Any]:
    """``message.status`` / ``message.failed`` data from a status change (``apply_status_updates``):
    the message (``change["message"]``, its row) reporting this fact's status, time and error."""
    error = None
    if change["status"] == "failed":
        error = message_error(change.get("error_code"), change.get("error_message"))
    return message_data(
        change["message"],
        business=change.get("business_number"),
        status=change["status"],
        timestamp=change.get("occurred_at"),
        error=error,
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
    (Cloud API echoes): ``origin`` the row's (``"phone"`` when it has none), ``from`` = the business's
    own number (the row's ``from``), ``timestamp`` = when it was typed."""
    origin = row.get("origin") or ORIGIN_PHONE
    return message_data(
        row,
        business=row.get("from"),
        status="sent",
        timestamp=row.get("provider_timestamp"),
        route_reason=BUSINESS_APP_ROUTE_REASON if origin == ORIGIN_BUSINESS_APP else PHONE_ROUTE_REASON,
        origin=origin,
    )


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
# (``message_data``), as the change left it, plus ONE extra key, ``change``. Built from the row that
# ``db.message_changes`` returns.

CHANGE_EVENT_TYPES = {"edit": MESSAGE_EDITED, "revoke": MESSAGE_DELETED, "reaction": MESSAGE_REACTION}


def changed_message(row: Mapping[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``message.edited`` / ``message.deleted`` / ``message.reaction`` data: the message as it is
    after the change (``row``: ``to`` of an inbound one, ``from`` of an outbound one, when known),
    plus ``change`` (``edited_change``, ``deleted_change``, ``reaction_change``)."""
    error = None
    if row.get("error_code") is not None or row.get("error_message") is not None:
        error = {"code": row.get("error_code"), "message": row.get("error_message")}
    business = row.get("to") if row.get("direction") == "inbound" else row.get("from")
    data = message_data(row, business=business, error=error, route_reason=row.get("route_reason"))
    data["change"] = change
    return data


def edited_change(previous_content: Any, at: dt.datetime | None) -> dict[str, Any]:
    return {"previous_content": previous_content, "at": format_ts_or_none(at)}


def deleted_change(at: dt.datetime | None, by: str | None) -> dict[str, Any]:
    return {"at": format_ts_or_none(at), "by": by}


def reaction_change(sender: str | None, emoji: str, removed: bool, at: dt.datetime | None) -> dict[str, Any]:
    return {"from": sender, "emoji": emoji, "removed": removed, "at": format_ts_or_none(at)}


def change_event(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(type, data)`` for one applied change (``db.message_changes.record_changes`` result); a
    reaction's removal names the emoji removed."""
    kind, at = result["kind"], result["at"]
    if kind == "edit":
        change = edited_change(result.get("previous_content"), at)
    elif kind == "revoke":
        change = deleted_change(at, result.get("actor"))
    else:
        change = reaction_change(
            result.get("actor"), result.get("emoji") or "", bool(result.get("removed")), at
        )
    return CHANGE_EVENT_TYPES[kind], changed_message(result["message"], change)


def change_events(tenant_id: str, results: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(tenant_id, type, data)`` per applied change, in order."""
    return [(tenant_id, *change_event(result)) for result in results]
