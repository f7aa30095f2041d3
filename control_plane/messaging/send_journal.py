"""The send journal: what this process put on the wire and what the provider answered, in a local
append-only file, so that the next process on the same node settles the claims of one that died
(kill -9, OOM) at once instead of waiting for their lease and a confirmation.

One line per event, written with one ``os.write`` (``O_APPEND``) each, on the send path::

    ["S", message_id, attempt, provider]                       the request is about to leave
    ["A", message_id, attempt, provider, provider_message_id, wa_id]    the provider accepted it
    ["N", message_id, attempt]                                 answered: not accepted (nothing sent)

A killed process's lines are in the page cache and survive it. No fsync: nothing waits on the disk,
so after the machine itself went down the last lines may be missing: a journal written before the
current boot (its header's boot id) is trusted for its "A" lines only.

Files under ``DATA_DIR/send-journal/``: ``<owner>.lock``, held with ``flock`` for the life of the
process (``owner`` is the dispatcher's node id, the outbox rows' ``claimed_by``), and segments
``<owner>.<n>.log``, each starting with ``["H", owner, <wall time>, <boot id>]``; a segment past
``segment_bytes`` is followed by a new one and the one before it is deleted (two are kept).

A lock nobody holds is a dead process (``dead()``). Its claims are judged by the last line of their
attempt (``DeadJournal.verdict``):

    A                                  ACCEPTED   sent, with its provider id: recorded at once
    N, or no line while the journal    UNSENT     it never reached the provider: queued again at once
      covers the claim (its first
      segment is kept, or a later one
      began before the claim)
    S                                  IN_FLIGHT  the request was open at the crash: unknown (a status
                                                  webhook, a Web ack or the reconcile delay decides)
    no line, journal does not cover    UNKNOWN    the same as IN_FLIGHT
      the claim (rotated away); or
      anything but A when the journal
      was written before the last boot
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from control_plane.providers.base import Failed, Outcome, Retryable, Sent

log = logging.getLogger(__name__)

DIR_NAME = "send-journal"
SEGMENT_BYTES = 4 * 1024 * 1024
# A segment covers the claims made after it began; this much slack for the wall clock between the
# claim's timestamp (utcnow) and the segment's header.
CLOCK_SLACK_S = 2.0

ACCEPTED, UNSENT, IN_FLIGHT, UNKNOWN = "accepted", "unsent", "in_flight", "unknown"


@dataclass(frozen=True, slots=True)
class Entry:
    """The last line of one message in a journal."""

    kind: str  # S | A | N
    attempt: int
    provider: str | None = None
    provider_message_id: str | None = None
    wa_id: str | None = None


def boot_id() -> str | None:
    """This boot of the machine (Linux); None where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _safe_owner(owner: str) -> bool:
    return bool(owner) and len(owner) <= 64 and all(c.isalnum() or c in "-_" for c in owner)


class SendJournal:
    """This process's journal. ``open()`` returns None when DATA_DIR cannot hold one (the claims of
    a crash then take the lease path)."""

    def __init__(self, directory: Path, owner: str, lock_fd: int, *, segment_bytes: int) -> None:
        self.directory = directory
        self.owner = owner
        self._lock_fd = lock_fd
        self._segment_bytes = segment_bytes
        self._segment = -1
        self._fd = -1
        self._size = 0
        self._broken = False
        self._rotate()

    @classmethod
    def open(cls, data_dir: Path, owner: str, *, segment_bytes: int = SEGMENT_BYTES) -> SendJournal | None:
        if not _safe_owner(owner):
            log.warning("send journal off: node id %r is not a file name", owner)
            return None
        directory = Path(data_dir) / DIR_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Locked before it has its name: a scanner never finds the lock of a live process free.
            tmp = directory / f".{owner}.lock.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            log.warning("send journal off: cannot write in %s: %s", directory, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, directory / f"{owner}.lock")
            return cls(directory, owner, fd, segment_bytes=segment_bytes)
        except OSError as exc:
            log.warning("send journal off: cannot write in %s: %s", directory, exc)
            for leftover in (tmp, directory / f"{owner}.lock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            os.close(fd)
            return None

    # -- the send path ----------------------------------------------------------------------------

    def sending(self, message_id: str, attempt: int, provider: str) -> None:
        self._write(["S", message_id, attempt, provider])

    def answered(self, message_id: str, attempt: int, provider: str, outcome: Outcome) -> None:
        """After the provider's answer: accepted or not (an ``Unknown`` answer leaves the "S")."""
        if isinstance(outcome, Sent):
            line = ["A", message_id, attempt, provider, outcome.provider_message_id, outcome.canonical_wa_id]
            self._write(line)
        elif isinstance(outcome, Retryable | Failed):
            self._write(["N", message_id, attempt])

    def _write(self, line: list[object]) -> None:
        if self._broken:
            return
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        try:
            os.write(self._fd, data)
            self._size += len(data)
            if self._size > self._segment_bytes:
                self._rotate()
        except OSError as exc:
            self._give_up(exc)

    def _rotate(self) -> None:
        """A new segment (its header first), then the one before the previous goes."""
        self._segment += 1
        fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        header = (json.dumps(["H", self.owner, time.time(), boot_id()]) + "\n").encode()
        os.write(fd, header)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size = fd, len(header)
        with contextlib.suppress(FileNotFoundError):
            if self._segment >= 2:
                os.unlink(self._path(self._segment - 2))

    def _give_up(self, exc: OSError) -> None:
        """A journal with a gap would vouch for claims it lost: without its lock file, the claims of
        this process take the lease path, and the scanner removes the segments."""
        log.error("send journal off after a write failed: %s", exc)
        self._broken = True
        with contextlib.suppress(OSError):
            os.unlink(self.directory / f"{self.owner}.lock")

    def _path(self, n: int) -> Path:
        return self.directory / f"{self.owner}.{n}.log"

    def close(self) -> None:
        """Releases the lock; the files stay (the next process settles what they hold)."""
        for fd in (self._fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._lock_fd = -1

    # -- other processes on this node -------------------------------------------------------------

    def dead(self) -> list[DeadJournal]:
        """The journals of processes that are gone (their lock is free), each locked for the caller
        (``release()`` or ``remove()`` it). Segments whose lock file is gone are deleted."""
        found: list[DeadJournal] = []
        owners = set()
        for lock in sorted(self.directory.glob("*.lock")):
            owner = lock.name[: -len(".lock")]
            owners.add(owner)
            if owner == self.owner:
                continue
            dead = DeadJournal.lock(self.directory, owner)
            if dead is not None:
                found.append(dead)
        for segment in self.directory.glob("*.log"):
            if segment.name.split(".", 1)[0] not in owners:
                with contextlib.suppress(OSError):
                    segment.unlink()
        return found


class DeadJournal:
    """The journal of a process that is gone, locked by us while its claims are settled."""

    def __init__(self, directory: Path, owner: str, lock_fd: int) -> None:
        self.directory = directory
        self.owner = owner
        self._lock_fd = lock_fd
        self.entries: dict[str, Entry] = {}
        # The first segment began before the process's first claim: it covers them all. Once it has
        # been rotated away, the journal covers the claims made after the oldest kept one began.
        self.covers_all = False
        self.covers_from: float | None = None  # wall time the oldest kept segment began
        self.same_boot = False  # written since the machine last started: no line can be missing
        self._read()

    @classmethod
    def lock(cls, directory: Path, owner: str) -> DeadJournal | None:
        try:
            fd = os.open(directory / f"{owner}.lock", os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: that process is alive
            os.close(fd)
            return None
        return cls(directory, owner, fd)

    def _segments(self) -> list[Path]:
        def number(p: Path) -> int:
            n = p.name[len(self.owner) + 1 : -len(".log")]
            return int(n) if n.isdigit() else -1

        return sorted((p for p in self.directory.glob(f"{self.owner}.*.log") if number(p) >= 0), key=number)

    def _read(self) -> None:
        segments = self._segments()
        self.covers_all = bool(segments) and segments[0].name == f"{self.owner}.0.log"
        for i, segment in enumerate(segments):
            for line in _lines(segment):
                try:
                    self._take(line, first_segment=i == 0)
                except (IndexError, TypeError, ValueError):
                    log.warning("send journal of %s: unreadable line %r skipped", self.owner, line)

    def _take(self, line: list, *, first_segment: bool) -> None:
        kind = line[0]
        if kind == "H":
            if first_segment:
                self.covers_from = float(line[2])
                written_in = line[3] if len(line) > 3 else None
                self.same_boot = written_in is not None and written_in == boot_id()
            return
        message_id, attempt = str(line[1]), int(line[2])
        if kind == "S":
            self.entries[message_id] = Entry(kind, attempt, provider=line[3])
        elif kind == "A":
            self.entries[message_id] = Entry(kind, attempt, line[3], line[4], line[5])
        elif kind == "N":
            self.entries[message_id] = Entry(kind, attempt)

    def verdict(self, message_id: str, attempt: int, claimed_at: dt.datetime | None) -> str:
        """ACCEPTED | UNSENT | IN_FLIGHT | UNKNOWN for this claim (``claimed_at`` naive UTC)."""
        entry = self.entries.get(message_id)
        if entry is not None and entry.attempt == attempt and entry.kind == "A":
            return ACCEPTED
        if not self.same_boot:  # the machine went down since: the last lines may never have been written
            return UNKNOWN
        if entry is not None and entry.attempt == attempt:
            return UNSENT if entry.kind == "N" else IN_FLIGHT
        if self.covers_all:
            return UNSENT
        if claimed_at is not None and self.covers_from is not None:
            claimed = claimed_at.replace(tzinfo=dt.UTC).timestamp()
            if self.covers_from <= claimed - CLOCK_SLACK_S:
                return UNSENT
        return UNKNOWN

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def remove(self) -> None:
        """Its claims are settled: the segments go, then the lock file, then our lock."""
        for segment in self._segments():
            with contextlib.suppress(OSError):
                segment.unlink()
        with contextlib.suppress(OSError):
            (self.directory / f"{self.owner}.lock").unlink()
        self.release()


def _lines(path: Path) -> Iterator[list]:
    """The complete lines of a segment (a torn last line is skipped)."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, list) and len(line) >= 3:
            yield line
