"""Message statuses and outbox states: the names, and which moves between them are allowed.

The bottom layer (standard library only), like ``events.py`` and ``supervisor/states.py``. Members are
``StrEnum``s, so they compare equal to, and are stored as, their plain string values.

A message's ``status`` climbs one ladder and never moves back::

    queued -> sending -> sent -> failed -> delivered -> read -> played

``failed`` outranks ``sent`` (Meta reports failures after accepting a message) but not ``delivered``
or ``read``: a failure reported after delivery is recorded (error code, message, time) without moving
the status. Inbound messages are ``received`` and stay so.

An outbound message's ``outbox.state``::

    queued  -> sending (claimed: claimed_by/claimed_at is the lease) -> done
                 |  \\-> queued   (retryable error or pacing: next_attempt_at in the future)
                 \\--> unknown    (the provider may have it: a crash or timeout between send and
                                   answer; resolved by a confirmation, or queued again)
"""

from __future__ import annotations

import enum


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    RECEIVED = "received"


M = MessageStatus

# Rank on the ladder: a status moves only to a higher rank. ``received`` is inbound and terminal.
STATUS_RANK: dict[str, int] = {
    M.QUEUED: 0,
    M.SENDING: 1,
    M.SENT: 2,
    M.FAILED: 3,
    M.DELIVERED: 4,
    M.READ: 5,
    M.PLAYED: 6,
    M.RECEIVED: 0,
}

# The message column that records when a status was reached.
STATUS_TIME_COLUMN: dict[str, str] = {
    M.SENT: "sent_at",
    M.DELIVERED: "delivered_at",
    M.READ: "read_at",
    M.PLAYED: "read_at",
    M.FAILED: "failed_at",
}

OUTBOUND_STATUSES: frozenset[str] = frozenset(s for s in MessageStatus if s is not M.RECEIVED)


def status_rank(status: str | None) -> int:
    return STATUS_RANK.get(status or "", -1)


def can_advance(current: str, new: str) -> bool:
    """Whether an outbound message at ``current`` may move to ``new`` (strictly up the ladder)."""
    if current == M.RECEIVED or new == M.RECEIVED:
        return False
    return status_rank(new) > status_rank(current)


class OutboxState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    UNKNOWN = "unknown"
    DONE = "done"


_O = OutboxState

OUTBOX_TRANSITIONS: dict[OutboxState, frozenset[OutboxState]] = {
    _O.QUEUED: frozenset({_O.SENDING, _O.DONE}),  # claimed; or cancelled/failed before a send
    _O.SENDING: frozenset({_O.DONE, _O.QUEUED, _O.UNKNOWN}),
    _O.UNKNOWN: frozenset({_O.DONE, _O.QUEUED}),  # confirmed by the provider, or sent again
    _O.DONE: frozenset(),
}


def can_move_outbox(current: str, new: str) -> bool:
    return OutboxState(new) in OUTBOX_TRANSITIONS[OutboxState(current)]
