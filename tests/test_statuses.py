"""The status ladder and the outbox state machine (control_plane/statuses.py)."""

import pytest

from control_plane.statuses import (
    OUTBOX_TRANSITIONS,
    MessageStatus,
    OutboxState,
    can_advance,
    can_move_outbox,
    status_rank,
)

pytestmark = pytest.mark.smoke


def test_the_ladder_only_climbs():
    ladder = ["queued", "sending", "sent", "failed", "delivered", "read", "played"]
    for i, lower in enumerate(ladder):
        for higher in ladder[i + 1 :]:
            assert can_advance(lower, higher), (lower, higher)
            assert not can_advance(higher, lower), (higher, lower)
        assert not can_advance(lower, lower)


def test_received_is_terminal_and_never_reached_by_outbound():
    for status in MessageStatus:
        assert not can_advance(MessageStatus.RECEIVED, status)
        assert not can_advance(status, MessageStatus.RECEIVED)
    assert status_rank("nonsense") == -1


def test_statuses_are_plain_strings():
    assert MessageStatus.DELIVERED == "delivered" and f"{MessageStatus.DELIVERED}" == "delivered"
    assert OutboxState("unknown") is OutboxState.UNKNOWN


def test_outbox_transitions():
    assert set(OUTBOX_TRANSITIONS) == set(OutboxState)
    assert can_move_outbox("queued", "sending")
    assert can_move_outbox("sending", "unknown") and can_move_outbox("unknown", "queued")
    assert not can_move_outbox("done", "queued")
    assert not can_move_outbox("queued", "unknown")
    with pytest.raises(ValueError):
        can_move_outbox("queued", "nonsense")
