"""Event names the CRM receives, the Socket.IO room names and the one timestamp format of events and
API answers. The bottom layer: standard library only, imported by everyone.

Payload shapes are documented in ``docs/EVENTS.md``; add a name here and a section there together.
"""

from __future__ import annotations

import datetime as dt

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
