"""The runner's mailbox: what a tenant's runner has been asked to do, and the event that wakes it;
and the ``Outcome`` of one bridge run (its exit code and what we had asked).

Only the strongest pending request is kept: a weaker one never replaces a stronger one (a kill by
the watchdog does not undo a stop a person asked for).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

# What the runner can be asked to do, strongest first.
ACTION_PRIORITY = {"logout": 5, "stop": 4, "restart": 3, "expire": 2, "kill": 1}


@dataclass(frozen=True)
class Action:
    kind: str  # logout | stop | restart | expire | kill
    reason: str

    def outranks(self, other: Action | None) -> bool:
        """Stronger than ``other`` (anything outranks nothing)."""
        return other is None or ACTION_PRIORITY[self.kind] > ACTION_PRIORITY[other.kind]


class Mailbox:
    """One pending Action at most, and ``wake`` set while there is one."""

    __slots__ = ("pending", "wake")

    def __init__(self) -> None:
        self.pending: Action | None = None
        self.wake = asyncio.Event()

    def put(self, kind: str, reason: str) -> None:
        """Asks for ``kind`` unless something stronger is pending (equal: the newer reason wins)."""
        current = self.pending
        if current is None or ACTION_PRIORITY[kind] >= ACTION_PRIORITY[current.kind]:
            self.pending = Action(kind, reason)
        self.wake.set()

    def take(self) -> Action | None:
        action, self.pending = self.pending, None
        self.wake.clear()
        return action


@dataclass(frozen=True)
class Outcome:
    """How one bridge run ended."""

    code: int
    cause: Action | None  # what we asked for, None when it died on its own
    fatal_code: str | None  # code of the bridge's fatal `error` event, if it reported one
    error: str | None = None  # the technical text of why it ended (the fatal event's message, ...)
