"""The send journal (messaging/send_journal.py) and the reconcile delay (messaging/recovery.py), without
a database: what a dead process's journal says about each of its claims, found through its free lock;
and how the measured status delays become the wait before an unconfirmed send goes again."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from control_plane.messaging import send_journal as sj
from control_plane.messaging.recovery import MIN_SAMPLES, reconcile_delay_s
from control_plane.messaging.send_journal import SendJournal
from control_plane.providers.base import Failed, Retryable, Sent, Unknown
from tests.conftest import ROOT

CLOUD = "business_api"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_a_closed_journal_is_found_dead_and_judges_each_claim(tmp_path):
    gone = SendJournal.open(tmp_path, "node-gone")
    assert gone is not None
    claimed = utc_now()
    gone.sending("m-accepted", 1, CLOUD)
    gone.answered("m-accepted", 1, CLOUD, Sent("wamid.A", "15550001111"))
    gone.sending("m-refused", 1, CLOUD)
    gone.answered("m-refused", 1, CLOUD, Retryable("130429", "rate limit"))
    gone.sending("m-failed", 2, "web")
    gone.answered("m-failed", 2, "web", Failed("131026", "undeliverable"))
    gone.sending("m-open", 1, CLOUD)
    gone.sending("m-timeout", 1, CLOUD)
    gone.answered("m-timeout", 1, CLOUD, Unknown("no answer"))  # leaves the "S"
    gone.sending("m-retried", 1, CLOUD)
    gone.answered("m-retried", 1, CLOUD, Sent("wamid.OLD"))  # an earlier attempt of the claim
    gone.close()  # its lock is free: as if the process were gone

    me = SendJournal.open(tmp_path, "node-me")
    assert me is not None
    (dead,) = me.dead()
    try:
        assert dead.owner == "node-gone" and dead.covers_all
        assert dead.verdict("m-accepted", 1, claimed) == sj.ACCEPTED
        entry = dead.entries["m-accepted"]
        assert (entry.provider, entry.provider_message_id, entry.wa_id) == (CLOUD, "wamid.A", "15550001111")
        assert dead.verdict("m-refused", 1, claimed) == sj.UNSENT
        assert dead.verdict("m-failed", 2, claimed) == sj.UNSENT
        assert dead.verdict("m-open", 1, claimed) == sj.IN_FLIGHT
        assert dead.entries["m-open"].provider == CLOUD
        assert dead.verdict("m-timeout", 1, claimed) == sj.IN_FLIGHT
        assert dead.verdict("m-retried", 2, claimed) == sj.UNSENT  # attempt 2 never left
        assert dead.verdict("m-never", 1, claimed) == sj.UNSENT  # claimed, never sent
    finally:
        dead.remove()
    assert sorted(p.name for p in (tmp_path / sj.DIR_NAME).iterdir()) == ["node-me.0.log", "node-me.lock"]
    assert me.dead() == []
    me.close()


def test_a_live_journal_is_not_dead(tmp_path):
    live = SendJournal.open(tmp_path, "node-live")
    other = SendJournal.open(tmp_path, "node-other")
    assert live is not None and other is not None
    live.sending("m1", 1, CLOUD)
    assert other.dead() == [] and live.dead() == []  # each holds its own lock
    live.close()
    assert [d.owner for d in other.dead()] == ["node-live"]
    other.close()


def test_a_journal_killed_with_sigkill_is_found_dead_with_every_line(tmp_path):
    """The lines of a process killed -9 are in the page cache; its flock goes with it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from control_plane.messaging.send_journal import SendJournal
        from control_plane.providers.base import Sent
        j = SendJournal.open({str(tmp_path)!r}, "node-killed")
        for i in range(1000):
            j.sending(f"m{{i}}", 1, "business_api")
            j.answered(f"m{{i}}", 1, "business_api", Sent(f"wamid.{{i}}"))
        j.sending("m-open", 1, "business_api")
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        me = SendJournal.open(tmp_path, "node-me")
        assert me is not None
        assert me.dead() == []  # alive
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        (dead,) = me.dead()
        assert dead.verdict("m999", 1, utc_now()) == sj.ACCEPTED
        assert dead.entries["m999"].provider_message_id == "wamid.999"
        assert dead.verdict("m-open", 1, utc_now()) == sj.IN_FLIGHT
        dead.remove()
        me.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_rotated_journal_covers_only_claims_after_its_oldest_segment(tmp_path):
    before = utc_now() - dt.timedelta(seconds=30)
    gone = SendJournal.open(tmp_path, "node-busy", segment_bytes=2000)
    assert gone is not None
    for i in range(200):  # several segments; the oldest are deleted
        gone.sending(f"m{i}", 1, CLOUD)
        gone.answered(f"m{i}", 1, CLOUD, Sent(f"wamid.{i}"))
    gone.close()
    segments = sorted((tmp_path / sj.DIR_NAME).glob("node-busy.*.log"))
    assert len(segments) == 2
    me = SendJournal.open(tmp_path, "node-me")
    assert me is not None
    (dead,) = me.dead()
    assert not dead.covers_all and dead.covers_from is not None
    assert dead.verdict("m199", 1, before) == sj.ACCEPTED  # its own lines are kept
    assert dead.verdict("m0", 1, before) == sj.UNKNOWN  # its lines may have been rotated away
    later = utc_now() + dt.timedelta(seconds=sj.CLOCK_SLACK_S + 1)
    assert dead.verdict("m-later", 1, later) == sj.UNSENT  # claimed after the oldest kept segment began
    dead.remove()
    me.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    gone = SendJournal.open(tmp_path, "node-torn")
    assert gone is not None
    gone.sending("m1", 1, CLOUD)
    gone.close()
    with open(tmp_path / sj.DIR_NAME / "node-torn.0.log", "ab") as f:
        f.write(b'["A","m1",1,"business_api","wam')  # the kill came mid-write
    me = SendJournal.open(tmp_path, "node-me")
    assert me is not None
    (dead,) = me.dead()
    assert dead.verdict("m1", 1, utc_now()) == sj.IN_FLIGHT
    dead.remove()
    me.close()


def test_after_a_reboot_only_accepted_lines_are_trusted(tmp_path):
    """Lines may not have reached the disk when the machine went down: a journal of another boot
    says "sent" when it saw the answer, and "unknown" otherwise, never "not sent"."""
    gone = SendJournal.open(tmp_path, "node-rebooted")
    assert gone is not None
    gone.sending("m-accepted", 1, CLOUD)
    gone.answered("m-accepted", 1, CLOUD, Sent("wamid.A"))
    gone.sending("m-refused", 1, CLOUD)
    gone.answered("m-refused", 1, CLOUD, Failed("131026", "undeliverable"))
    gone.close()
    segment = tmp_path / sj.DIR_NAME / "node-rebooted.0.log"
    header, rest = segment.read_text().split("\n", 1)
    kind, owner, at, boot = json.loads(header)
    assert boot == sj.boot_id()
    segment.write_text(json.dumps([kind, owner, at, "an-earlier-boot"]) + "\n" + rest)
    me = SendJournal.open(tmp_path, "node-me")
    assert me is not None
    (dead,) = me.dead()
    assert dead.verdict("m-accepted", 1, utc_now()) == sj.ACCEPTED
    assert dead.verdict("m-refused", 1, utc_now()) == sj.UNKNOWN
    assert dead.verdict("m-never", 1, utc_now()) == sj.UNKNOWN
    dead.remove()
    me.close()


def test_no_journal_where_data_dir_cannot_hold_one(tmp_path):
    (tmp_path / sj.DIR_NAME).write_text("a file, not a directory")
    assert SendJournal.open(tmp_path, "node-x") is None
    assert SendJournal.open(tmp_path / "ok", "../escape") is None


@pytest.mark.parametrize(
    "samples,expected",
    [
        ([0.2] * (MIN_SAMPLES - 1), None),  # too few: the longest wait
        ([0.2] * 99 + [0.5], 5.0),  # 4 x p99 0.5 s = 2 s, under the 5 s floor
        ([1.0] * 98 + [3.0, 30.0], 12.0),  # p99 is the 99th of 100: 3 s x 4
        ([2.0] * 95 + [None] * 5, None),  # 5 % never got a status: webhooks go missing
        ([20.0] * 100, 60.0),  # capped
    ],
)
def test_reconcile_delay_is_a_multiple_of_the_p99_within_floor_and_cap(samples, expected):
    assert reconcile_delay_s(samples, factor=4.0, floor_s=5.0, cap_s=60.0) == expected
