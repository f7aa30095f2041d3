"""webhooks/fields.py alone (pure): routing keys, dedup keys, what is skipped."""

from __future__ import annotations

import copy

from control_plane.webhooks.fields import parse_fields
from control_plane.webhooks.payload import parse_delivery
from tests.webhooks.samples import FIELD_SAMPLES, sample


def _parse(payload):
    return parse_fields(parse_delivery(payload).fields)


def test_every_sample_but_messages_is_handed_over_and_routed():
    for name in FIELD_SAMPLES:
        parsed = parse_delivery(sample(name))
        if name == "messages_errors":
            assert parsed.fields == [] and parsed.numbers["106540352242922"].errors
            continue
        out = parse_fields(parsed.fields)
        assert out.skipped == 0 and out.notice_count() == 1, name
        value = parsed.fields[0][1]["value"]
        if "metadata" in value:  # by number when the change names one, else by WABA
            assert list(out.numbers) == [value["metadata"]["phone_number_id"]] and not out.wabas
        else:
            assert list(out.wabas) == [parsed.fields[0][0]["id"]] and not out.numbers


def test_dedup_key_is_the_change_itself():
    payload = sample("template_status_approved")
    (first,) = _parse(payload).wabas["102290129340398"].notices
    (again,) = _parse(copy.deepcopy(payload)).wabas["102290129340398"].notices
    assert first["dedup_key"] == again["dedup_key"]
    later = sample("template_status_approved")
    later["entry"][0]["time"] += 60  # approved again later (after a pause, say): a new change
    (other,) = _parse(later).wabas["102290129340398"].notices
    assert other["dedup_key"] != first["dedup_key"]


def test_changes_that_name_nothing_or_unusable_echoes_are_skipped():
    payload = sample("account_violation")
    del payload["entry"][0]["id"]
    payload["entry"][0]["changes"].append({"field": "account_update", "value": "not an object"})
    assert _parse(payload).skipped == 2
    echo = sample("smb_message_echo_text")
    del echo["entry"][0]["changes"][0]["value"]["message_echoes"][0]["to"]
    out = _parse(echo)
    assert out.skipped == 1 and out.numbers["106540352242922"].phone == []
    assert len(out.numbers["106540352242922"].notices) == 1  # still kept raw


def test_unknown_fields_are_kept_without_events():
    payload = sample("account_violation")
    change = payload["entry"][0]["changes"][0]
    change["field"], change["value"] = "phone_number_quality_update", {"event": "FLAGGED"}
    (notice,) = _parse(payload).wabas["102290129340398"].notices
    assert notice["field"] == "phone_number_quality_update" and notice["events"] == []
    assert notice["raw"] == {"event": "FLAGGED"}
