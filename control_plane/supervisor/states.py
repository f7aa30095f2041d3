"""Pure module (standard library only): the per-tenant session state machine.

    stopped -> starting -> qr -> authenticated -> ready
    any live state -> disconnected | backoff | failed | stopping | logged_out
    backoff -> starting          (the restart after a crash)
    stopping -> stopped | failed | logged_out | starting (restart)

``SessionStateMachine.change()`` is the one mutation point: every transition is checked against
``TRANSITIONS`` and stamped with a reason and the time it happened.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class SessionState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    QR = "qr"
    AUTHENTICATED = "authenticated"
    READY = "ready"
    DISCONNECTED = "disconnected"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"
    LOGGED_OUT = "logged_out"


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


S = SessionState
# A bridge process exists in these states (it may be on its way out).
LIVE = frozenset({S.STARTING, S.QR, S.AUTHENTICATED, S.READY, S.DISCONNECTED, S.STOPPING})
# Ways out of any state that has a bridge process.
_EXITS = frozenset({S.DISCONNECTED, S.BACKOFF, S.FAILED, S.STOPPING, S.LOGGED_OUT})

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.STOPPED: frozenset({S.STARTING, S.LOGGED_OUT}),
    S.STARTING: frozenset({S.QR, S.AUTHENTICATED, S.READY}) | _EXITS,
    S.QR: frozenset({S.AUTHENTICATED, S.READY}) | _EXITS,
    # ready/authenticated can fire again after WhatsApp Web reloads its page
    S.AUTHENTICATED: frozenset({S.READY, S.QR}) | _EXITS,
    S.READY: frozenset({S.AUTHENTICATED, S.QR}) | _EXITS,
    S.DISCONNECTED: frozenset({S.BACKOFF, S.FAILED, S.STOPPING, S.LOGGED_OUT, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FAILED, S.LOGGED_OUT}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.LOGGED_OUT}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.LOGGED_OUT, S.STARTING, S.BACKOFF}),
    S.LOGGED_OUT: frozenset({S.STARTING, S.STOPPED}),
}


class InvalidTransition(Exception):
    """A transition that TRANSITIONS does not allow (a bug, or a late event from a dying bridge)."""

    def __init__(self, current: SessionState, new: SessionState) -> None:
        super().__init__(f"session cannot go from {current.value} to {new.value}")
        self.current = current
        self.new = new


def can_transition(current: SessionState, new: SessionState) -> bool:
    return new in TRANSITIONS[current]


def utcnow() -> dt.datetime:
    """Naive UTC, the form the database stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Transition:
    previous: SessionState
    state: SessionState
    reason: str | None
    since: dt.datetime


class SessionStateMachine:
    """Holds one session's actual state; ``change()`` is the only way to move it."""

    __slots__ = ("detail", "error", "reason", "since", "state")

    def __init__(
        self,
        state: SessionState = S.STOPPED,
        reason: str | None = None,
        since: dt.datetime | None = None,
        *,
        detail: str | None = None,
        error: str | None = None,
    ) -> None:
        self.state = state
        self.reason = reason
        self.since = since or utcnow()
        self.detail = detail  # the reason in words an admin can act on (supervisor/causes.py)
        self.error = error  # the technical text behind it (the bridge's error message, ...)

    def change(
        self,
        new: SessionState,
        reason: str | None = None,
        *,
        detail: str | None = None,
        error: str | None = None,
    ) -> Transition:
        """Moves to ``new`` or raises InvalidTransition. Returns what happened."""
        if not can_transition(self.state, new):
            raise InvalidTransition(self.state, new)
        previous = self.state
        self.state, self.reason, self.since = new, reason, utcnow()
        self.detail, self.error = detail, error
        return Transition(previous, new, reason, self.since)

    def __repr__(self) -> str:
        return f"SessionStateMachine({self.state.value!r}, reason={self.reason!r})"
