"""Compact JSON text (``separators=(",", ":")``, ``ensure_ascii=False``) for the hot paths.

``json.dumps`` with options builds a ``JSONEncoder`` and its C twin on every call, which costs
about as much as encoding a small object; :func:`dict_encoder` builds the C encoder once.

Not orjson, although it encodes these payloads 5-7x faster: its text differs from ``json.dumps``'s
where it is stored and compared. NaN and infinities become ``null``; floats between 1e-10 and 1e-4
are spelled otherwise (1e-05 -> 0.00001, 3e-07 -> 3e-7); ``uuid.UUID`` is written natively, not
through ``default``; ints past 64 bits and lone surrogates raise. tests/webhooks/test_fast_encoding.py
holds both encoders (events, messages) to json.dumps."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def dict_encoder(default: Callable[[Any], Any]) -> Callable[[dict], str]:
    """``encode(obj)`` == ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
    default=default)`` for a dict, without the cycle check (payloads are trees, never cycles).
    Falls back to ``json.dumps`` where the C module is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:

        def encode_slow(obj: dict) -> str:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=default)

        return encode_slow
    c_encode = make(None, default, basestring, None, ":", ",", False, False, True)

    def encode(obj: dict) -> str:
        return "".join(c_encode(obj, 0))

    return encode
