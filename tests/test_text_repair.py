"""``control_plane/text_repair.py``: the fast check never misses a lone surrogate and never fires on
clean text (Meta's samples, emoji escaped as pairs, Hangul's UTF-8 bytes), so clean deliveries cost
one regex search; the repair is deterministic and touches only what no UTF-8 encoder accepts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from control_plane import text_repair as tr
from tests.fakes import graph_api as g
from tests.webhooks.samples import FIELD_SAMPLES, sample

SAMPLES = Path(__file__).parent / "webhooks" / "samples"


def _clean_bodies() -> list[bytes]:
    bodies = [json.dumps(json.loads(p.read_text())).encode() for p in sorted(SAMPLES.glob("*.json"))]
    bodies += [json.dumps(sample(name)).encode() for name in FIELD_SAMPLES]
    text = "Olá \N{GRINNING FACE} 你好 한국어 \N{FAMILY}"  # pairs, BMP, Hangul (UTF-8 bytes ED 95..9E)
    bodies.append(json.dumps({"text": text}).encode())  # Meta's form: \\u escapes, pairs for emoji
    bodies.append(json.dumps({"text": text}, ensure_ascii=False).encode())  # the bridge's: raw UTF-8
    return bodies


def test_clean_text_is_never_walked():
    bodies = _clean_bodies()
    assert len(bodies) > 20
    for body in bodies:
        assert not tr.may_have_lone_surrogates(body), body[:200]


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\ud800"',
        b'"x\\uDBFFy"',
        b'"\\udc00"',
        b'"\\ud83d\\ud83d\\ude00"',  # a high one, then a pair
        b'"\\ude00\\ud83d"',  # a pair backwards
        b'"end \\ud83d"',
        b'"\xed\xa0\x80"',  # UTF-8 bytes of U+D800 (read with "surrogatepass")
    ],
)
def test_every_lone_surrogate_is_seen_and_repaired(raw):
    assert tr.may_have_lone_surrogates(raw)
    text = json.loads(raw.decode("utf-8", "surrogatepass"))
    fixed = tr.repaired(text)
    assert fixed is not None and "\ufffd" in fixed
    fixed.encode("utf-8")
    data = {"a": [text, {"k": text}], text: 1}
    found = tr.repair_tree(data)
    assert len(found) == 3
    assert data == {"a": [fixed, {"k": fixed}], fixed: 1}
    assert tr.find_lone_surrogate({"ok": "\N{GRINNING FACE}", "n": [1, {"x": text}]}) == "n.1.x"


def test_valid_text_is_left_alone():
    for text in ("", "ascii", "\N{GRINNING FACE}", "\ufffd already", "한국어"):
        assert tr.repaired(text) is None
    data = {"a": ["\N{GRINNING FACE}"], "b": {"c": 1}}
    assert tr.repair_tree(data) == [] and data == {"a": ["\N{GRINNING FACE}"], "b": {"c": 1}}


def test_the_check_costs_microseconds_on_a_clean_delivery():
    """The figures for the report: the check on typical deliveries (one text message, as Meta sends
    it), plain ASCII, accented and with two emoji."""
    for text in (
        "Hello, I would like two pizzas",
        "Olá, como está?",
        "ok \N{GRINNING FACE}\N{THUMBS UP SIGN}",
    ):
        body = json.dumps(
            g.messages_payload("1234567", "7654321", messages=[g.text_message("16505551234", text)])
        )
        raw = body.encode()
        assert not tr.may_have_lone_surrogates(raw)
        rounds = 20_000
        started = time.perf_counter()
        for _ in range(rounds):
            tr.may_have_lone_surrogates(raw)
        per_call_us = (time.perf_counter() - started) / rounds * 1e6
        print(f"\nmay_have_lone_surrogates: {per_call_us:.2f} us per {len(raw)}-byte delivery ({text!r})")
        assert per_call_us < 100  # generous: a shared 2-core machine; typically 1-3 us
