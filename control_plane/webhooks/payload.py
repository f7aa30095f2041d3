"""Meta webhook payloads -> what we store. Pure: no I/O.

``parse_delivery(data)`` walks EVERY entry and EVERY change (Meta batches them) and groups what it
finds by ``value.metadata.phone_number_id``. Changes of other fields than ``messages`` are handed
over whole to ``webhooks/fields.py`` (``ParsedDelivery.fields``). Each message's ``content`` is
provider-neutral (``normalize_content``, documented in docs/EVENTS.md); types we do not model are
kept whole under ``content.raw``; and every message keeps Meta's object verbatim (``raw``, stored in
``messages.raw``), so a field nothing reads today is still there tomorrow. Messages that change
another message (types ``reaction``, ``edit``, ``revoke``) are not messages of their own: they go to
``changes`` (``change_item``).

Senders. A message names its sender by phone number (``from``, the contact's ``wa_id``), by
business-scoped user id (``from_user_id``, the contact's ``user_id``: a BSUID, Meta's id for a user
who may hide the number behind a username), or both; the ``contacts[]`` entry adds the profile name
and ``profile.username``. A message item's ``wa_id`` is the phone number when known, else the BSUID;
``bsuid`` and ``username`` are kept beside it (``db/contacts.py`` maps them to one conversation).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from control_plane import errors
from control_plane.db.conversations import CONTACT_ID_LEN, USERNAME_LEN, clip, is_bsuid
from control_plane.db.messages import PROVIDER_ID_LEN
from control_plane.text_repair import WARNINGS_KEY

PROVIDER = "business_api"
# Statuses Meta sends for outbound messages (cloud-api.md §7).
KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed", "played"})
_ENVELOPE_KEYS = ("id", "from", "timestamp")


@dataclass
class NumberBatch:
    """Everything one delivery carries for one phone_number_id."""

    phone_number_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ParsedDelivery:
    numbers: dict[str, NumberBatch] = field(default_factory=dict)
    ignored_changes: int = 0  # changes without metadata.phone_number_id, not objects ...
    skipped_items: int = 0  # malformed messages/statuses (no id, no sender ...)
    fields: list[tuple[Any, Any]] = field(default_factory=list)  # (entry, change): webhooks/fields.py

    def number(self, pnid: str) -> NumberBatch:
        batch = self.numbers.get(pnid)
        if batch is None:
            batch = self.numbers[pnid] = NumberBatch(pnid)
        return batch


_EPOCH = dt.datetime(1970, 1, 1)
_SECOND = dt.timedelta(seconds=1)


# Meta's time strings -> their datetimes: a batch's messages and statuses mostly share a few seconds
# (one object each, so the events' ``format_ts`` finds them in its cache too). Cleared when full.
_SECONDS: dict[str, dt.datetime] = {}
_SECONDS_MAX = 4096


def unix_ts(value: Any) -> dt.datetime | None:
    """Meta's unix-second strings -> naive UTC; None when absent or unreadable."""
    if type(value) is str:
        known = _SECONDS.get(value)
        if known is not None:
            return known
        if value.isascii() and value.isdigit() and len(value) < 12:  # ASCII seconds under 10**11
            whole = int(value)
            if whole < 32503680000:
                if len(_SECONDS) >= _SECONDS_MAX:
                    _SECONDS.clear()
                known = _SECONDS[value] = _EPOCH + _SECOND * whole
                return known
    try:
        seconds = int(value) if type(value) is str and value.isdigit() else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= seconds < 32503680000:  # year 3000
        return None
    if type(seconds) is int:
        return _EPOCH + _SECOND * seconds
    return _EPOCH + dt.timedelta(seconds=seconds)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _error_fields(errs: Any) -> tuple[str | None, str | None]:
    if not isinstance(errs, list) or not errs or not isinstance(errs[0], dict):
        return None, None
    first = errs[0]
    data = first.get("error_data")
    if not isinstance(data, dict):
        data = {}
    code = first.get("code")
    message = data.get("details") or first.get("message") or first.get("title")
    return (str(code) if code is not None else None), (str(message) if message is not None else None)


MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


def _pick(part: Any, *keys: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        return {}
    return {k: part[k] for k in keys if part.get(k) is not None}


# interactive replies: button_reply/list_reply {id, title, description}; nfm_reply (flows, address)
# {response_json, body, name}; call_permission_reply {response, is_permanent, expiration_timestamp,
# response_source}.
_REPLY_KEYS = (
    "id",
    "title",
    "description",
    "response_json",
    "body",
    "name",
    "response",
    "is_permanent",
    "expiration_timestamp",
    "response_source",
)
_MEDIA_KEYS = ("mime_type", "sha256", "caption", "filename", "voice", "animated", "url")
_CONTEXT_KEYS = ("from", "id", "forwarded", "frequently_forwarded", "referred_product")
_CONTEXT_KEY_SET = frozenset(_CONTEXT_KEYS)


# What ``normalize_content`` and the message's columns keep of a message: a message with nothing else
# is fully modeled, and its Meta object need not be stored a second time (``unmodeled``).
_MODELED_TOP = frozenset(
    {"id", "from", "timestamp", "type", "context", "referral", "errors", "identity", "from_user_id"}
)
_MODELED_PART: dict[str, frozenset[str]] = {
    "text": frozenset({"body"}),
    "location": frozenset({"latitude", "longitude", "name", "address", "url"}),
    "button": frozenset({"payload", "text"}),
    **{kind: frozenset({*_MEDIA_KEYS, "id"}) for kind in MEDIA_TYPES},
}


def unmodeled(msg: dict[str, Any], kind: str) -> bool:
    """Whether ``msg`` carries anything its ``content`` and columns do not keep (a field Meta added,
    a type we do not model, a context key beyond the known ones): then its object is kept verbatim."""
    part_keys = _MODELED_PART.get(kind)
    if part_keys is None:
        return kind != "contacts"  # contact cards are kept whole in content; other types: keep all
    part = msg.get(kind)
    if not isinstance(part, dict) or not part.keys() <= part_keys:
        return True
    for key in msg:
        if key != kind and key not in _MODELED_TOP:
            return True
    context = msg.get("context")
    return isinstance(context, dict) and not context.keys() <= _CONTEXT_KEY_SET


def normalize_content(msg: dict[str, Any], kind: str) -> dict[str, Any]:
    """The provider-neutral ``content`` (docs/EVENTS.md): the fields a CRM needs per type; types we do
    not model (order, system, referral-only, unsupported, anything new) keep Meta's object as ``raw``."""
    part = msg.get(kind)
    if kind == "text":
        content: dict[str, Any] = {"text": part.get("body", "") if isinstance(part, dict) else ""}
    elif kind in MEDIA_TYPES:
        content = _pick(part, *_MEDIA_KEYS)
        if isinstance(part, dict) and part.get("id") is not None:
            content["media_id"] = str(part["id"])
    elif kind == "location":
        content = _pick(part, "latitude", "longitude", "name", "address", "url")
    elif kind == "contacts":
        content = {"contacts": part if isinstance(part, list) else []}
    elif kind == "interactive":
        reply_type = part.get("type") if isinstance(part, dict) else None
        reply = part.get(reply_type) if isinstance(part, dict) and isinstance(reply_type, str) else None
        content = {"reply_type": reply_type, **_pick(reply, *_REPLY_KEYS)}
    elif kind == "button":
        content = _pick(part, "payload", "text")
    elif kind == "reaction":
        content = {
            "message_id": part.get("message_id") if isinstance(part, dict) else None,
            "emoji": (part.get("emoji") or "") if isinstance(part, dict) else "",
        }
    else:
        content = {"raw": {k: v for k, v in msg.items() if k not in _ENVELOPE_KEYS}}
    context = msg.get("context")
    if isinstance(context, dict):
        content["context"] = _pick(context, *_CONTEXT_KEYS)
    if "raw" not in content:
        for extra in ("referral", "errors", "identity"):
            if msg.get(extra) is not None:
                content[extra] = msg[extra]
    if WARNINGS_KEY in msg:  # text that was no Unicode, repaired (control_plane/text_repair.py)
        content["warnings"] = msg.pop(WARNINGS_KEY)
    return content


class Contacts:
    """A change's ``contacts[]``: each sender's phone number, BSUID, profile name and username, found
    by phone number or by BSUID."""

    __slots__ = ("by_id", "only")

    def __init__(self, value: dict[str, Any]) -> None:
        self.by_id: dict[str, tuple[str | None, str | None, str | None, str | None]] = {}
        self.only: tuple[str | None, str | None, str | None, str | None] | None = None
        entries = value.get("contacts")
        if not isinstance(entries, list):
            return
        single = len(entries) == 1
        by_id = self.by_id
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            profile = entry.get("profile")
            if not isinstance(profile, dict):
                profile = {}
            name, username = profile.get("name"), profile.get("username") or entry.get("username")
            wa_id, user_id = entry.get("wa_id"), entry.get("user_id")
            found = (
                wa_id if type(wa_id) is str and 0 < len(wa_id) <= CONTACT_ID_LEN else _phone(wa_id),
                user_id if user_id is not None and is_bsuid(user_id) else None,
                name if isinstance(name, str) else None,
                clip(username, USERNAME_LEN) if isinstance(username, str) and username else None,
            )
            if found[0] is not None:
                by_id[found[0]] = found
            if found[1] is not None:
                by_id[found[1]] = found
            self.only = found if single else None

    def sender(
        self, phone: str | None, bsuid: str | None
    ) -> tuple[str | None, str | None, str | None, str | None]:
        """(phone, bsuid, name, username) of a message's sender: what the message says, completed by
        its contacts[] entry (a change with one contact describes the sender of its messages)."""
        found = (bsuid and self.by_id.get(bsuid)) or (phone and self.by_id.get(phone)) or self.only
        if not found:
            return phone, bsuid, None, None
        return phone or found[0], bsuid or found[1], found[2], found[3]


def _phone(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > CONTACT_ID_LEN:
        return None
    return value


def is_id(value: Any) -> bool:
    """A provider message id we store: a non-empty string of at most ``PROVIDER_ID_LEN`` characters
    (stored whole; a longer one is refused: its item is skipped and counted, never cut)."""
    return isinstance(value, str) and 0 < len(value) <= PROVIDER_ID_LEN


def _sender_bsuid(msg: dict[str, Any], kind: str) -> tuple[str | None, str | None]:
    """(the sender's BSUID, the BSUID it replaces). A ``user_changed_user_id`` system message names
    no sender: it is the user who was ``previous_user_id`` and now is ``user_id``."""
    bsuid = msg.get("from_user_id")
    if kind == "system" and isinstance(msg.get("system"), dict):
        system = msg["system"]
        if system.get("type") == "user_changed_user_id" and is_bsuid(system.get("previous_user_id")):
            new = system.get("user_id")
            return (new if is_bsuid(new) else None), system["previous_user_id"]
    return (bsuid if is_bsuid(bsuid) else None), None


def _message_item(
    msg: dict[str, Any], contacts: Contacts, business_number: str | None
) -> dict[str, Any] | None:
    wamid = msg.get("id")
    if not is_id(wamid):
        return None
    kind = msg.get("type")
    if not isinstance(kind, str) or not kind:
        kind = "unknown"
    bsuid, previous = _sender_bsuid(msg, kind)
    phone, bsuid, name, username = contacts.sender(_phone(msg.get("from")), bsuid)
    address = phone or bsuid or previous
    if address is None:
        return None
    return {
        "provider": PROVIDER,
        "provider_message_id": wamid,
        "wa_id": address,
        "bsuid": bsuid,
        "previous_bsuid": previous,
        "username": username,
        "type": kind,
        "content": normalize_content(msg, kind),
        # Meta's object, when the columns and content do not keep all of it (an odd from_user_id too).
        "raw": msg if unmodeled(msg, kind) or msg.get("from_user_id", bsuid) != bsuid else None,
        "provider_timestamp": unix_ts(msg.get("timestamp")),
        "contact_name": name,
        "to": business_number,
    }


# ------------------------------------------------------------- changes to a stored message

# Meta's message types that change an earlier message instead of being one (docs/EVENTS.md):
#   reaction  {"message_id", "emoji"}: emoji absent or "" when the user removed their reaction
#   edit      {"original_message_id", "message": {"type", "<type>": {...}, "context"?}}
#   revoke    {"original_message_id"}
# edit and revoke come from WhatsApp Business app users ("Coexistence"), also as smb_message_echoes
# (the business edited or deleted its own message; ``from`` is then the business number).
CHANGE_TYPES = frozenset({"reaction", "edit", "revoke"})


def change_item(msg: dict[str, Any]) -> dict[str, Any] | None:
    """A reaction/edit/revoke message (``messages[]`` or ``message_echoes[]``) -> a
    ``message_changes.record_changes`` item; None when it names no message or has no id."""
    kind, wamid, sender = msg.get("type"), msg.get("id"), msg.get("from")
    part = msg.get(kind) if isinstance(kind, str) else None
    if kind not in CHANGE_TYPES or not isinstance(part, dict) or not is_id(wamid):
        return None
    target = part.get("message_id") if kind == "reaction" else part.get("original_message_id")
    if not is_id(target) or (isinstance(sender, str) and len(sender) > CONTACT_ID_LEN):
        return None
    item: dict[str, Any] = {
        "provider": PROVIDER,
        "provider_message_id": wamid,
        "target_provider_message_id": target,
        "kind": kind,
        "actor": str(sender) if isinstance(sender, (str, int)) and str(sender) else None,
        "occurred_at": unix_ts(msg.get("timestamp")),
    }
    if kind == "reaction":
        emoji = part.get("emoji")
        item["emoji"] = emoji if isinstance(emoji, str) else ""
    elif kind == "edit":
        edited = part.get("message")
        edited_type = edited.get("type") if isinstance(edited, dict) else None
        if not isinstance(edited, dict) or not isinstance(edited_type, str) or not edited_type:
            return None
        item["content"] = normalize_content(edited, edited_type)
    return item


def _status_item(st: dict[str, Any], business_number: str | None) -> dict[str, Any] | None:
    wamid, status = st.get("id"), st.get("status")
    if not is_id(wamid) or status not in KNOWN_STATUSES:
        return None
    code, message = _error_fields(st.get("errors"))
    # A send to a BSUID has no recipient_id (the phone number): its recipient_user_id names it.
    recipient = _phone(st.get("recipient_id"))
    bsuid = st.get("recipient_user_id")
    return {
        "provider": PROVIDER,
        "provider_message_id": wamid,
        "status": status,
        "occurred_at": unix_ts(st.get("timestamp")),
        "recipient_id": recipient or (bsuid if is_bsuid(bsuid) else None),
        "recipient_user_id": bsuid if is_bsuid(bsuid) else None,
        "error_code": code,
        "error_message": message,
        "raw": st,
        "business_number": business_number,
    }


def _business_number(metadata: dict[str, Any]) -> str | None:
    number = metadata.get("display_phone_number")
    if not number:
        return None
    number = str(number)
    return number if number.isdigit() else "".join(ch for ch in number if ch.isdigit())


def _add_change(
    parsed: ParsedDelivery, batch: NumberBatch, value: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """One change's messages and statuses into its number's batch (malformed items are counted)."""
    business_number = _business_number(metadata)
    contacts = Contacts(value)
    for msg in _list(value.get("messages")):
        if isinstance(msg, dict) and msg.get("type") in CHANGE_TYPES:
            change = change_item(msg)
            if change is None:
                parsed.skipped_items += 1
            else:
                batch.changes.append(change)
            continue
        item = _message_item(msg, contacts, business_number) if isinstance(msg, dict) else None
        if item is None:
            parsed.skipped_items += 1
        else:
            batch.messages.append(item)
    for st in _list(value.get("statuses")):
        item = _status_item(st, business_number) if isinstance(st, dict) else None
        if item is None:
            parsed.skipped_items += 1
        else:
            batch.statuses.append(item)
    if value.get("errors"):
        batch.errors.append(value["errors"])


def parse_delivery(data: Any) -> ParsedDelivery:
    """Group a delivery's messages and statuses by phone_number_id (400 if it is not Meta-shaped)."""
    if not isinstance(data, dict) or not isinstance(data.get("entry"), list):
        raise errors.BadRequest(
            "expected a WhatsApp Business Account webhook: an object with an 'entry' list",
            code="invalid_webhook",
        )
    parsed = ParsedDelivery()
    for entry in data["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            parsed.ignored_changes += 1
            continue
        for change in changes:
            if isinstance(change, dict) and change.get("field", "messages") != "messages":
                parsed.fields.append((entry, change))  # templates, account, calls ...: fields.py
                continue
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if value is None or metadata is None or pnid is None or not str(pnid):
                parsed.ignored_changes += 1
                continue
            _add_change(parsed, parsed.number(str(pnid)), value, metadata)
    return parsed
