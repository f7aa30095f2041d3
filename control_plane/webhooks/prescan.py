"""What a delivery names, read before its signature is checked: its routing ids. Pure: no I/O.

A delivery is signed with the app secret of the tenant(s) it names, so the route must find those
tenants before it can check anything; until then the body is unauthenticated input. This module is
the only work done on it before the check: the JSON (depth-limited, ``http/parsing.py``) and a shallow
walk over ``entry[].changes[]`` collecting the ids the full parse routes by, exactly as it does:

- a ``messages`` change (or one without ``field``): ``str(value.metadata.phone_number_id)``
  (``payload.parse_delivery``);
- a change of another field (``webhooks/fields.py``): its ``value.metadata.phone_number_id`` when it
  has one, else the WABA id ``entry.id``.

At most ``max_ids`` distinct ids (numbers and WABAs together) per delivery: past it, 413
``too_many_ids`` and nothing more is read. Meta batches at most about 1,000 changes in one delivery,
each naming one id, so the default (``WEBHOOK_MAX_ROUTING_IDS``, 5,000) is far above anything Meta
sends; it bounds the lookups a forged delivery can cause. (``tests/webhooks/test_prescan.py`` checks
these ids against the full parse's on every sample delivery.)

``scan_raw`` is the same for the raw bytes, run in a worker process for large bodies
(``webhooks/decoder.py``): it returns plain tuples, which cross a process boundary unchanged. A small
body (up to ``WEBHOOK_INLINE_DECODE_BYTES``) is parsed whole where it arrives instead, before the
check (bounded work: its JSON is read anyway), and ``parsed_ids`` reads the ids from that parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from control_plane import errors
from control_plane.http.parsing import parse_json
from control_plane.webhooks.payload import ParsedDelivery


@dataclass(frozen=True, slots=True)
class RoutingIds:
    """The phone_number_ids and WABA ids a delivery routes by (each distinct)."""

    numbers: tuple[str, ...] = ()
    wabas: tuple[str, ...] = ()


def _field_str(value: Any) -> str | None:
    """``fields._str``: scalars as strings; objects, arrays and empty strings name nothing."""
    return None if value is None or isinstance(value, (dict, list)) else (str(value) or None)


def _change_id(entry: dict[str, Any], change: Any) -> tuple[str | None, bool]:
    """(the id one change routes by or None, whether it is a phone_number_id)."""
    if isinstance(change, dict) and change.get("field", "messages") != "messages":
        value = change.get("value")
        if not isinstance(value, dict):
            return None, False
        metadata = value.get("metadata")
        pnid = _field_str(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
        if pnid:
            return pnid, True
        return _field_str(entry.get("id")), False
    value = change.get("value") if isinstance(change, dict) else None
    metadata = value.get("metadata") if isinstance(value, dict) else None
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if pnid is None or not str(pnid):
        return None, False
    return str(pnid), True


def routing_ids(data: Any, max_ids: int) -> RoutingIds:
    """The ids ``data`` (a parsed delivery) routes by; 400 ``invalid_webhook`` when it is not shaped
    like one, 413 ``too_many_ids`` past ``max_ids`` distinct ids."""
    if not isinstance(data, dict) or not isinstance(data.get("entry"), list):
        raise errors.BadRequest(
            "expected a WhatsApp Business Account webhook: an object with an 'entry' list",
            code="invalid_webhook",
        )
    numbers: dict[str, None] = {}  # insertion-ordered sets
    wabas: dict[str, None] = {}
    for entry in data["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            continue
        for change in changes:
            # The common change (field messages, metadata with a string id) read in line.
            if type(change) is dict and change.get("field", "messages") == "messages":
                value = change.get("value")
                metadata = value.get("metadata") if type(value) is dict else None
                pnid = metadata.get("phone_number_id") if type(metadata) is dict else None
                if type(pnid) is str and pnid:
                    numbers[pnid] = None
                    if len(numbers) + len(wabas) > max_ids:
                        raise too_many_ids(max_ids)
                    continue
            key, is_number = _change_id(entry, change)
            if key is None:
                continue
            (numbers if is_number else wabas)[key] = None
            if len(numbers) + len(wabas) > max_ids:
                raise too_many_ids(max_ids)
    return RoutingIds(tuple(numbers), tuple(wabas))


def parsed_ids(parsed: ParsedDelivery, max_ids: int) -> RoutingIds:
    """``routing_ids`` of a delivery parsed whole already (``payload.parse_delivery``, which a small
    body costs no more than this walk): its numbers, then the ids its changes of other fields route
    by. The same ids (in another order when fields and messages interleave), the same cap."""
    numbers = dict.fromkeys(parsed.numbers)
    wabas: dict[str, None] = {}
    for entry, change in parsed.fields:
        key, is_number = _change_id(entry, change)
        if key is not None:
            (numbers if is_number else wabas)[key] = None
    if len(numbers) + len(wabas) > max_ids:
        raise too_many_ids(max_ids)
    return RoutingIds(tuple(numbers), tuple(wabas))


def too_many_ids(max_ids: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"the delivery names more than {max_ids} distinct phone_number_ids and WABA ids",
        code="too_many_ids",
    )


# What ``scan_raw`` returns: ("ok", numbers, wabas), or ("error", kind, code, message) with kind
# "bad_request" (400) or "too_large" (413). Exceptions would lose their code crossing processes.
ScanResult = tuple[Any, ...]


def scan_raw(raw: bytes, max_ids: int) -> ScanResult:
    """``parse_json`` then ``routing_ids``, for a worker process."""
    try:
        ids = routing_ids(parse_json(raw), max_ids)
    except errors.PayloadTooLarge as exc:
        return ("error", "too_large", exc.code, exc.message)
    except errors.BadRequest as exc:
        return ("error", "bad_request", exc.code, exc.message)
    return ("ok", ids.numbers, ids.wabas)


def scan_result(result: ScanResult) -> RoutingIds:
    """``scan_raw``'s answer back as ids, or its error raised."""
    if result[0] == "ok":
        return RoutingIds(result[1], result[2])
    _, kind, code, message = result
    if kind == "too_large":
        raise errors.PayloadTooLarge(message, code=code)
    raise errors.BadRequest(message, code=code)
