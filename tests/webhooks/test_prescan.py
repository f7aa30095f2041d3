"""What is read of a delivery before its signature is checked (``webhooks/prescan.py``): the same
routing ids as the full parse, on every sample and on odd shapes; the cap; the worker's answers."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from control_plane import errors
from control_plane.webhooks.fields import parse_fields
from control_plane.webhooks.payload import parse_delivery
from control_plane.webhooks.prescan import RoutingIds, parsed_ids, routing_ids, scan_raw, scan_result
from tests.fakes import graph_api as g
from tests.webhooks import flood
from tests.webhooks.samples import FIELD_SAMPLES, sample


def full_parse_ids(data: Any) -> tuple[set[str], set[str]]:
    """(numbers, WABAs) the route resolves after the full parse (routes._parse_and_route)."""
    parsed = parse_delivery(data)
    other = parse_fields(parsed.fields) if parsed.fields else None
    numbers = set(parsed.numbers) | (set(other.numbers) if other else set())
    return numbers, set(other.wabas) if other else set()


def assert_same_ids(data: Any) -> RoutingIds:
    """routing_ids (the walk before the signature) and parsed_ids (from the whole parse of a small
    body) name exactly what the full parse routes by."""
    ids = routing_ids(data, 10_000)
    assert len(set(ids.numbers)) == len(ids.numbers) and len(set(ids.wabas)) == len(ids.wabas)
    assert (set(ids.numbers), set(ids.wabas)) == full_parse_ids(data), json.dumps(data, default=str)[:400]
    from_parse = parsed_ids(parse_delivery(data), 10_000)
    assert len(set(from_parse.numbers)) == len(from_parse.numbers)
    assert len(set(from_parse.wabas)) == len(from_parse.wabas)
    assert (set(from_parse.numbers), set(from_parse.wabas)) == full_parse_ids(data)
    return ids


@pytest.mark.parametrize("name", FIELD_SAMPLES)
def test_samples_name_what_the_full_parse_routes_by(name):
    assert_same_ids(sample(name))
    assert_same_ids(sample(name, waba="111", pnid="222"))


def test_messages_deliveries_name_their_numbers():
    ids = assert_same_ids(g.messages_payload("9", "106540352242922", messages=[g.text_message("1", "hi")]))
    assert ids == RoutingIds(("106540352242922",), ())
    spread = g.text_batch(3, 2, waba_id=["1", "2", "3"], phone_number_id=["10", "20", "10"])
    assert assert_same_ids(spread).numbers == ("10", "20")


ODD_VALUES: list[Any] = [None, "", "123", 123, 0, 1.5, True, [], {}, ["1"], {"a": 1}, "x" * 80]


def _odd(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))


def _random_change(rng: random.Random) -> Any:
    if rng.random() < 0.05:
        return _odd(rng)
    change: dict[str, Any] = {}
    if rng.random() < 0.7:
        change["field"] = rng.choice(
            ["messages", "account_update", "calls", "smb_message_echoes", None, 5, ""]
        )
    if rng.random() < 0.9:
        value: Any = {} if rng.random() < 0.9 else _odd(rng)
        if isinstance(value, dict) and rng.random() < 0.8:
            metadata: Any = {} if rng.random() < 0.9 else _odd(rng)
            if isinstance(metadata, dict) and rng.random() < 0.8:
                metadata["phone_number_id"] = rng.choice([*ODD_VALUES, "106", "107", 106])
            value["metadata"] = metadata
        change["value"] = value
    return change


def _random_delivery(rng: random.Random) -> dict[str, Any]:
    entries: list[Any] = []
    for _ in range(rng.randint(0, 4)):
        if rng.random() < 0.05:
            entries.append(_odd(rng))
            continue
        entry: dict[str, Any] = {}
        if rng.random() < 0.8:
            entry["id"] = rng.choice([*ODD_VALUES, "555", "556", 555])
        if rng.random() < 0.95:
            entry["changes"] = [_random_change(rng) for _ in range(rng.randint(0, 4))]
        entries.append(entry)
    return {"object": "whatsapp_business_account", "entry": entries}


def test_odd_shapes_name_what_the_full_parse_routes_by():
    rng = random.Random(15)
    for _ in range(3_000):
        assert_same_ids(_random_delivery(rng))


def test_not_a_delivery_is_400():
    for data in ([], {"entry": {}}, {"object": "x"}, "entry"):
        with pytest.raises(errors.BadRequest) as info:
            routing_ids(data, 10)
        assert info.value.code == "invalid_webhook"


def test_the_cap_counts_distinct_numbers_and_wabas_together():
    data = json.loads(flood.unknown_numbers(10, 1))
    assert len(routing_ids(data, 10).numbers) == 10
    data["entry"][0]["changes"] += data["entry"][0]["changes"]  # the same numbers again: still 10
    assert len(routing_ids(data, 10).numbers) == 10
    data["entry"].append({"id": "42", "changes": [{"field": "account_update", "value": {}}]})
    with pytest.raises(errors.PayloadTooLarge) as info:
        routing_ids(data, 10)
    assert info.value.code == "too_many_ids"
    assert routing_ids(data, 11).wabas == ("42",)
    with pytest.raises(errors.PayloadTooLarge) as info:
        parsed_ids(parse_delivery(data), 10)
    assert info.value.code == "too_many_ids"
    assert parsed_ids(parse_delivery(data), 11).wabas == ("42",)


def test_the_workers_answers_keep_their_codes():
    assert scan_result(scan_raw(flood.unknown_numbers(3, 1), 10)).numbers == (
        "70000000100000",
        "70000000100001",
        "70000000100002",
    )
    for raw, code, kind in (
        (flood.unknown_numbers(11, 1), "too_many_ids", errors.PayloadTooLarge),
        (flood.deep(1_000), "too_deep", errors.BadRequest),
        (flood.wide(10, depth=65), "too_deep", errors.BadRequest),
        (b"{nope", "malformed_json", errors.BadRequest),
        (b'{"entry": 1}', "invalid_webhook", errors.BadRequest),
    ):
        result = scan_raw(raw, 10)
        with pytest.raises(kind) as info:
            scan_result(result)
        assert info.value.code == code, result
