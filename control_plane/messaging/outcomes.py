"""What the dispatcher hands the recorder for each claimed message: an outcome (a dict).

Every outcome has ``message_id``, ``kind``, ``provider`` and ``reason`` (the route's reason, kept in
the message's history); by kind:

    sent      provider_message_id, conversation_id, wa_id, at, message: the provider accepted it
    failed    error_code, error_message, conversation_id, wa_id, message: final
    retry     next_attempt_at, error_code, error_message: queued again with backoff
    defer     next_attempt_at: queued again, not an attempt (pacing, a held tenant)
    unknown   next_attempt_at (the reconcile deadline), error_message: the provider may have it

``message`` is the claimed row (the message's type, content, created_at, contact: what the recorder's
events show, ``events.message_data``). ``outbox_db.record_sent`` / ``record_outcomes`` store them in
the recorder's group commit.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from control_plane.db.engine import utcnow
from control_plane.providers.base import Failed, Outcome, Retryable, Sent, Unknown
from control_plane.statuses import MessageStatus, OutboxState

# kind: SENT and FAILED are the message's new status, UNKNOWN the outbox's new state; RETRY and
# DEFER put the row back in the queue (OutboxState.QUEUED) with its next_attempt_at.
SENT = MessageStatus.SENT
FAILED = MessageStatus.FAILED
UNKNOWN = OutboxState.UNKNOWN
RETRY = "retry"
DEFER = "defer"


def sent(row: dict[str, Any], provider: str, provider_message_id: str, reason: str) -> dict[str, Any]:
    return {
        "message_id": row["message_id"],
        "kind": SENT,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "conversation_id": row["conversation_id"],
        "wa_id": row["wa_id"],
        "reason": reason,
        "at": utcnow(),
        "message": row,
    }


def failed(row: dict[str, Any], provider: str | None, code: Any, message: str, reason: str) -> dict[str, Any]:
    return {
        "message_id": row["message_id"],
        "kind": FAILED,
        "provider": provider,
        "error_code": code,
        "error_message": message,
        "reason": reason,
        "conversation_id": row.get("conversation_id"),
        "wa_id": row.get("wa_id"),
        "message": row,
    }


def defer(row: dict[str, Any], provider: str | None, at: dt.datetime, reason: str) -> dict[str, Any]:
    return {
        "message_id": row["message_id"],
        "kind": DEFER,
        "provider": provider,
        "next_attempt_at": at,
        "reason": reason,
    }


def retry(
    row: dict[str, Any],
    settings: Any,
    provider: str | None,
    code: Any,
    message: str,
    reason: str,
    *,
    min_delay: float = 0.0,
) -> dict[str, Any]:
    """Queued again after an exponential backoff (jittered, at least ``min_delay``); failed once
    the message has had ``messaging_max_attempts``."""
    s = settings
    if row["attempts"] >= s.messaging_max_attempts:
        return failed(row, provider, code, f"gave up after {row['attempts']} attempts: {message}", reason)
    backoff = min(s.messaging_retry_cap_s, s.messaging_retry_base_s * 2 ** (row["attempts"] - 1))
    delay = max(min_delay, backoff * random.uniform(0.8, 1.2))
    return {
        "message_id": row["message_id"],
        "kind": RETRY,
        "provider": provider,
        "next_attempt_at": utcnow() + dt.timedelta(seconds=delay),
        "error_code": code,
        "error_message": message,
        "reason": f"retry in {delay:.1f} s: {message}"[:255],
    }


def unknown(
    row: dict[str, Any], settings: Any, provider: str | None, reason: str, message: str
) -> dict[str, Any]:
    """Settled later: by the provider's confirmation, or queued again after the reconcile wait."""
    return {
        "message_id": row["message_id"],
        "kind": UNKNOWN,
        "provider": provider,
        "reason": reason,
        "error_message": message,
        "next_attempt_at": utcnow() + dt.timedelta(seconds=settings.messaging_reconcile_s),
    }


def from_provider(
    row: dict[str, Any], settings: Any, provider: str, reason: str, outcome: Outcome
) -> dict[str, Any]:
    """The recorded outcome of a provider's answer."""
    if isinstance(outcome, Sent):
        return sent(row, provider, outcome.provider_message_id, reason)
    if isinstance(outcome, Retryable):
        return retry(
            row, settings, provider, outcome.code, outcome.message, reason, min_delay=outcome.retry_after_s
        )
    if isinstance(outcome, Failed):
        return failed(row, provider, outcome.code, outcome.message, reason)
    assert isinstance(outcome, Unknown)
    return unknown(row, settings, provider, reason, outcome.message)
