"""What the dispatcher records for a provider's answer (messaging/outcomes.py)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from control_plane.db.engine import utcnow
from control_plane.messaging import outcomes
from control_plane.providers.base import CLOUD, WEB, Failed, Retryable, Sent, Unknown
from control_plane.statuses import MessageStatus

SETTINGS = SimpleNamespace(
    messaging_max_attempts=3,
    messaging_retry_base_s=2.0,
    messaging_retry_cap_s=60.0,
    messaging_reconcile_s=90.0,
)
ROW = {"message_id": "m" * 32, "conversation_id": 7, "wa_id": "1555", "attempts": 1}


def test_sent_carries_the_provider_id_and_the_conversation():
    o = outcomes.from_provider(ROW, SETTINGS, CLOUD, "policy business_api_only", Sent("wamid.X", "551555"))
    assert o["kind"] == MessageStatus.SENT == "sent"
    assert {k: o[k] for k in ("provider", "provider_message_id", "conversation_id", "wa_id", "reason")} == {
        "provider": CLOUD,
        "provider_message_id": "wamid.X",
        "conversation_id": 7,
        "wa_id": "1555",
        "reason": "policy business_api_only",
    }
    assert abs((o["at"] - utcnow()).total_seconds()) < 5


def test_failed_is_final_with_code_and_message():
    o = outcomes.from_provider(ROW, SETTINGS, WEB, "policy web_only", Failed("bridge_not_on_whatsapp", "no"))
    assert (o["kind"], o["error_code"], o["error_message"], o["reason"]) == (
        "failed",
        "bridge_not_on_whatsapp",
        "no",
        "policy web_only",
    )


def test_retryable_backs_off_at_least_retry_after_then_gives_up():
    before = utcnow()
    o = outcomes.from_provider(
        ROW, SETTINGS, CLOUD, "r", Retryable("130429", "slow down", retry_after_s=30.0)
    )
    assert o["kind"] == outcomes.RETRY and o["error_code"] == "130429"
    assert o["next_attempt_at"] >= before + dt.timedelta(seconds=29.9)
    assert o["reason"].startswith("retry in 30.0 s: slow down")
    quick = outcomes.from_provider(ROW, SETTINGS, CLOUD, "r", Retryable("graph_unavailable", "down"))
    assert quick["next_attempt_at"] <= utcnow() + dt.timedelta(seconds=2.5)  # base 2 s, jitter 1.2x
    spent = outcomes.from_provider({**ROW, "attempts": 3}, SETTINGS, CLOUD, "r", Retryable("131000", "oops"))
    assert spent["kind"] == "failed" and spent["error_message"] == "gave up after 3 attempts: oops"


def test_unknown_waits_for_the_reconcile_deadline():
    o = outcomes.from_provider(ROW, SETTINGS, WEB, "r", Unknown("bridge gave no answer"))
    assert (o["kind"], o["error_message"], o["provider"]) == ("unknown", "bridge gave no answer", WEB)
    left = (o["next_attempt_at"] - utcnow()).total_seconds()
    assert 85 < left <= 90


@pytest.mark.parametrize("provider", [None, CLOUD])
def test_defer_is_not_an_attempt(provider):
    at = utcnow() + dt.timedelta(seconds=6)
    assert outcomes.defer(ROW, provider, at, "paced") == {
        "message_id": ROW["message_id"],
        "kind": "defer",
        "provider": provider,
        "next_attempt_at": at,
        "reason": "paced",
    }
