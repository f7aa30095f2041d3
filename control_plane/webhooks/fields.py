"""Meta webhook fields other than ``messages`` -> notices (what the inbound writer keeps, applies and
publishes) and echoed messages. Pure: no I/O.

``payload.parse_delivery`` hands every change whose ``field`` is not ``messages`` over as
``(entry, change)`` (``ParsedDelivery.fields``); ``parse_fields`` reads them:

==================================  =========================================  ======================
field                               event(s)                                   also stored
==================================  =========================================  ======================
message_template_status_update      template.status                            templates.status
message_template_quality_update     template.quality                           templates.quality_score
template_category_update            template.category                          templates.category
account_update                      account.update                             -
user_preferences                    contact.preferences (one per preference)   contact_preferences
calls                               call.connect / call.terminate /            -
                                    call.status / call.update
smb_message_echoes                  message.sent (origin business_app)         messages (outbound)
any, with a top-level ``errors``    provider.error                             -
==================================  =========================================  ======================

Every change is also kept raw (``provider_events``), new fields included, under a dedup key made of
the change itself (field, entry id and time, value): a redelivery stores and publishes nothing.

Routing: a change whose value names ``metadata.phone_number_id`` goes to that number's tenant, like
messages; the others (template and account updates are per WhatsApp Business Account) to the
tenants whose config holds the WABA id ``entry.id``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from control_plane import events as ev
from control_plane.db.conversations import CONTACT_ID_LEN
from control_plane.webhooks.payload import PROVIDER, is_id, normalize_content, unix_ts

FIELD_LEN = 64  # provider_events.field

Notice = dict[str, Any]


@dataclass
class FieldBatch:
    """What one routing key (a phone_number_id or a WABA id) gets from a delivery's other fields."""

    notices: list[Notice] = field(default_factory=list)
    phone: list[dict[str, Any]] = field(default_factory=list)  # smb_message_echoes, as phone items


@dataclass
class FieldDelivery:
    numbers: dict[str, FieldBatch] = field(default_factory=dict)  # by value.metadata.phone_number_id
    wabas: dict[str, FieldBatch] = field(default_factory=dict)  # by entry.id, when no phone_number_id
    skipped: int = 0  # changes that name neither, or are not objects

    def batch(self, pnid: str | None, waba_id: str | None) -> FieldBatch | None:
        if pnid:
            return self.numbers.setdefault(pnid, FieldBatch())
        if waba_id:
            return self.wabas.setdefault(waba_id, FieldBatch())
        return None

    def notice_count(self) -> int:
        return sum(len(b.notices) for b in [*self.numbers.values(), *self.wabas.values()])


@dataclass(frozen=True, slots=True)
class _Change:
    """One change and where it came from."""

    field: str
    value: dict[str, Any]
    entry_id: str | None
    entry_time: Any
    pnid: str | None


# ------------------------------------------------------------------------------------- helpers


def _str(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _ts(value: Any) -> str | None:
    return ev.format_ts_or_none(unix_ts(value))


def _fits(*pairs: Any) -> bool:
    """``value, length, value, length ...``: whether each value (None: absent) fits its column."""
    return all(v is None or len(v) <= n for v, n in zip(pairs[::2], pairs[1::2], strict=True))


def _digits(value: Any) -> str:
    return "".join(ch for ch in str(value or "") if ch.isdigit())


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def dedup_key(*parts: Any) -> str:
    """The same change delivered again -> the same key."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _notice(change: _Change, occurred: Any = None) -> Notice:
    """A change's notice: kept raw; ``events``, ``template``, ``preferences`` are filled per field."""
    return {
        "field": change.field,
        "dedup_key": dedup_key(change.field, change.entry_id, change.entry_time, change.pnid, change.value),
        "raw": change.value,
        "entry_id": change.entry_id,
        "phone_number_id": change.pnid,
        "occurred_at": unix_ts(occurred if occurred is not None else change.entry_time),
        "events": [],
        "template": None,
        "preferences": [],
    }


def error_data(
    field_name: str, errs: list[Any], waba_id: str | None, pnid: str | None, timestamp: str | None
) -> dict[str, Any]:
    """``provider.error`` data: the first error's code and message, all of them under ``errors``."""
    first: dict[str, Any] = next((e for e in errs if isinstance(e, dict)), {})
    details = first["error_data"] if isinstance(first.get("error_data"), dict) else {}
    return {
        "field": field_name,
        "waba_id": waba_id,
        "phone_number_id": pnid,
        "code": _str(first.get("code")),
        "message": _str(details.get("details") or first.get("message") or first.get("title")),
        "errors": errs,
        "timestamp": timestamp,
    }


def messages_errors_notice(pnid: str, errs: list[Any]) -> Notice:
    """A ``messages`` change's top-level ``errors`` (no timestamp: the same errors delivered again
    count as one)."""
    value = {"errors": errs, "metadata": {"phone_number_id": pnid}}
    notice = _notice(_Change("messages", value, None, None, pnid))
    notice["events"].append((ev.PROVIDER_ERROR, error_data("messages", errs, None, pnid, None)))
    return notice


# ----------------------------------------------------------------------------- template fields


def _template_ref(change: _Change) -> dict[str, Any]:
    v = change.value
    return {
        "waba_id": change.entry_id,
        "template_id": _str(v.get("message_template_id")),
        "name": _str(v.get("message_template_name")),
        "language": _str(v.get("message_template_language")),
    }


def _effect(ref: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {**{k: ref[k] for k in ("template_id", "name", "language")}, "values": values}


def _template_status(change: _Change, notice: Notice) -> None:
    v, ref = change.value, _template_ref(change)
    status, category = _str(v.get("event")), _str(v.get("message_template_category"))
    details = {k: v[k] for k in ("rejection_info", "disable_info", "other_info") if v.get(k) is not None}
    data = {
        **ref,
        "status": status,
        "reason": _str(v.get("reason")),
        "category": category,
        "details": details or None,
        "timestamp": _ts(change.entry_time),
    }
    notice["events"].append((ev.TEMPLATE_STATUS, data))
    values = {k: val for k, val in (("status", status), ("category", category)) if val}
    notice["template"] = _effect(ref, values)


def _template_quality(change: _Change, notice: Notice) -> None:
    v, ref = change.value, _template_ref(change)
    score = _str(v.get("new_quality_score"))
    data = {
        **ref,
        "quality_score": score,
        "previous_quality_score": _str(v.get("previous_quality_score")),
        "timestamp": _ts(change.entry_time),
    }
    notice["events"].append((ev.TEMPLATE_QUALITY, data))
    notice["template"] = _effect(ref, {"quality_score": score} if score else {})


def _template_category(change: _Change, notice: Notice) -> None:
    v, ref = change.value, _template_ref(change)
    category, correct = _str(v.get("new_category")), _str(v.get("correct_category"))
    data = {
        **ref,
        "category": category,  # the template's category now (an impending change: still the old one)
        "previous_category": _str(v.get("previous_category")),
        "correct_category": correct,  # only for an impending change: what it becomes
        "category_update_at": _ts(v.get("category_update_timestamp")),
        "pending": correct is not None,
        "timestamp": _ts(change.entry_time),
    }
    notice["events"].append((ev.TEMPLATE_CATEGORY, data))
    notice["template"] = _effect(ref, {"category": category} if category else {})


# ------------------------------------------------------------------------ account, preferences


def _account_update(change: _Change, notice: Notice) -> None:
    v = change.value
    data = {
        "waba_id": change.entry_id,
        "event": _str(v.get("event")),
        "phone_number": _str(v.get("phone_number")),
        "details": {k: val for k, val in v.items() if k not in ("event", "phone_number")} or None,
        "timestamp": _ts(change.entry_time),
    }
    notice["events"].append((ev.ACCOUNT_UPDATE, data))


def _user_ids(value: dict[str, Any]) -> dict[str, str]:
    """wa_id -> the contact's BSUID (``contacts[].user_id``), when Meta gives one."""
    out = {}
    for contact in _list(value.get("contacts")):
        if isinstance(contact, dict) and contact.get("wa_id") and contact.get("user_id"):
            out[str(contact["wa_id"])] = str(contact["user_id"])
    return out


def _user_preferences(change: _Change, notice: Notice) -> None:
    v = change.value
    user_ids = _user_ids(v)
    for pref in _list(v.get("user_preferences")):
        if not isinstance(pref, dict):
            continue
        wa_id = _digits(pref.get("wa_id")) or None
        user_id = _str(pref.get("user_id")) or (user_ids.get(wa_id) if wa_id else None)
        category, value = _str(pref.get("category")), _str(pref.get("value"))
        if not _fits(wa_id, CONTACT_ID_LEN, user_id, CONTACT_ID_LEN, category, 32, value, 16):
            continue  # a key past its column is refused (kept raw in the notice), never cut
        at = unix_ts(pref.get("timestamp"))
        data = {
            "wa_id": wa_id,
            "user_id": user_id,
            "phone_number_id": change.pnid,
            "category": category,
            "value": value,
            "detail": _str(pref.get("detail")),
            "timestamp": ev.format_ts_or_none(at),
        }
        notice["events"].append((ev.CONTACT_PREFERENCES, data))
        if wa_id and category and value:
            notice["preferences"].append({**data, "changed_at": at})
    if notice["occurred_at"] is None and notice["preferences"]:
        notice["occurred_at"] = notice["preferences"][0]["changed_at"]


# ------------------------------------------------------------------------------------- calls

_CALL_EVENTS = {"connect": ev.CALL_CONNECT, "terminate": ev.CALL_TERMINATE}


def _call_data(call: dict[str, Any], pnid: str | None, names: dict[str, str]) -> dict[str, Any]:
    frm = _str(call.get("from"))
    return {
        "call_id": _str(call.get("id")),
        "event": _str(call.get("event")),
        "direction": _str(call.get("direction")),
        "from": frm,
        "to": _str(call.get("to")),
        "contact_name": names.get(frm or ""),
        "status": _str(call.get("status")),
        "session": call.get("session") if isinstance(call.get("session"), dict) else None,
        "start_time": _ts(call.get("start_time")),
        "end_time": _ts(call.get("end_time")),
        "duration": call.get("duration"),
        "biz_opaque_callback_data": _str(call.get("biz_opaque_callback_data")),
        "errors": call.get("errors") if isinstance(call.get("errors"), list) else None,
        "phone_number_id": pnid,
        "timestamp": _ts(call.get("timestamp")),
    }


def _calls(change: _Change, notice: Notice) -> None:
    v = change.value
    names = {}
    for contact in _list(v.get("contacts")):
        profile = contact.get("profile") if isinstance(contact, dict) else None
        if isinstance(profile, dict) and contact.get("wa_id") and isinstance(profile.get("name"), str):
            names[str(contact["wa_id"])] = profile["name"]
    for call in _list(v.get("calls")):
        if isinstance(call, dict):
            notice["occurred_at"] = notice["occurred_at"] or unix_ts(call.get("timestamp"))
            kind = _CALL_EVENTS.get(str(call.get("event")), ev.CALL_UPDATE)
            notice["events"].append((kind, _call_data(call, change.pnid, names)))
    for st in _list(v.get("statuses")):  # a business-initiated call's progress (type "call")
        if isinstance(st, dict):
            notice["occurred_at"] = notice["occurred_at"] or unix_ts(st.get("timestamp"))
            data = _call_data({**st, "event": "status", "to": st.get("recipient_id")}, change.pnid, names)
            notice["events"].append((ev.CALL_STATUS, data))


# ------------------------------------------------------------------------------------- echoes


def _echoes(change: _Change, batch: FieldBatch) -> int:
    """Messages the business typed in the WhatsApp Business app -> phone items (outbound, stored like
    phone-typed Web messages with ``origin: "business_app"``). Returns how many were unusable."""
    skipped = 0
    for echo in _list(change.value.get("message_echoes")):
        wamid = echo.get("id") if isinstance(echo, dict) else None
        to = _digits(echo.get("to")) if isinstance(echo, dict) else ""
        if not is_id(wamid) or not to or len(to) > CONTACT_ID_LEN:  # ids whole, or refused
            skipped += 1
            continue
        kind = echo.get("type") if isinstance(echo.get("type"), str) and echo.get("type") else "unknown"
        batch.phone.append(
            {
                "provider": PROVIDER,
                "provider_message_id": wamid,
                "wa_id": to,
                "from": _digits(echo.get("from")) or None,
                "type": kind,
                "content": normalize_content(echo, kind),
                "provider_timestamp": unix_ts(echo.get("timestamp")),
                "origin": ev.ORIGIN_BUSINESS_APP,
            }
        )
    return skipped


# ------------------------------------------------------------------------------------- parsing

_PARSERS = {
    "message_template_status_update": _template_status,
    "message_template_quality_update": _template_quality,
    "template_category_update": _template_category,
    "account_update": _account_update,
    "user_preferences": _user_preferences,
    "calls": _calls,
}


def _change(entry: Any, change: Any) -> _Change | None:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        return None
    value = change["value"]
    metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
    pnid = _str(metadata.get("phone_number_id")) or None
    entry_id = _str(entry.get("id")) if isinstance(entry, dict) else None
    entry_time = entry.get("time") if isinstance(entry, dict) else None
    name = _str(change.get("field")) or "unknown"
    if not _fits(name, FIELD_LEN, entry_id, CONTACT_ID_LEN, pnid, CONTACT_ID_LEN):
        return None  # refused (counted as skipped): stored whole or not at all
    if name == "message_template_status_update" and "new_quality_score" in value and "event" not in value:
        name = "message_template_quality_update"  # Meta's own quality example says status_update
    return _Change(name, value, entry_id or None, entry_time, pnid)


def parse_fields(pairs: list[tuple[Any, Any]]) -> FieldDelivery:
    """``(entry, change)`` pairs of non-``messages`` fields -> notices and echoes per routing key."""
    out = FieldDelivery()
    for entry, raw in pairs:
        change = _change(entry, raw)
        batch = None if change is None else out.batch(change.pnid, change.entry_id)
        if change is None or batch is None:
            out.skipped += 1
            continue
        if change.field == "smb_message_echoes":
            out.skipped += _echoes(change, batch)
        notice = _notice(change)
        parser = _PARSERS.get(change.field)
        if parser is not None:
            parser(change, notice)
        errs = change.value.get("errors")
        if isinstance(errs, list) and errs:
            at = ev.format_ts_or_none(notice["occurred_at"])
            data = error_data(change.field, errs, change.entry_id, change.pnid, at)
            notice["events"].append((ev.PROVIDER_ERROR, data))
        batch.notices.append(notice)
    return out
