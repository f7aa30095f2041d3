"""Event names the CRM receives, and the Socket.IO room names. Pure: standard library only.

Payload shapes are documented in ``docs/EVENTS.md``; add a name here and a section there together.
"""

from __future__ import annotations

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
