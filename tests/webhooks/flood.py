"""Forged webhook deliveries (well-formed, signed with a made-up secret), and a client that posts them
back to back from its own process: ``python -m tests.webhooks.flood <url> <seconds>`` prints one JSON
object, ``{kind: {status: count}}``, when its time is up.

Kinds, in turn: ``ids40k`` (2.9 MB naming 40,000 phone_number_ids never seen before), ``ids1k`` (1,000
fresh ones with a status each, under the cap), ``deep`` (nested 100,000 levels) and ``wide`` (2.7 MB
of arrays nested 60 deep side by side: valid, just under the depth limit, costly to build).
"""

from __future__ import annotations

import http.client
import json
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable

_SLOT = b"QQQQQQQQ"  # replaced per body by an 8-digit serial: every id is fresh


def _template(count: int, with_status: bool) -> bytes:
    if with_status:
        change = (
            b'{"field":"messages","value":{"messaging_product":"whatsapp","metadata":'
            b'{"display_phone_number":"15550000000","phone_number_id":"7' + _SLOT + b'%05d"},'
            b'"statuses":[{"id":"wamid.' + _SLOT + b'%05d","status":"delivered","timestamp":"1700000000",'
            b'"recipient_id":"16505551234"}]}}'
        )
        changes = b",".join(change % (i, i) for i in range(count))
    else:
        change = b'{"value":{"metadata":{"phone_number_id":"7' + _SLOT + b'%05d"},"messages":[]}}'
        changes = b",".join(change % i for i in range(count))
    return b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[' + changes + b"]}]}"


def unknown_numbers(count: int, serial: int, *, with_status: bool = False) -> bytes:
    """A delivery naming ``count`` phone_number_ids ``7<serial:08d><i:05d>`` (no tenant's)."""
    return _template(count, with_status).replace(_SLOT, b"%08d" % serial)


def deep(levels: int = 100_000) -> bytes:
    return b'{"object":"whatsapp_business_account","entry":' + b"[" * levels + b"]" * levels + b"}"


def wide(groups: int = 22_000, depth: int = 60) -> bytes:
    group = b"[" * depth + b"]" * depth
    return b'{"object":"whatsapp_business_account","entry":[' + b",".join([group] * groups) + b"]}"


def kinds() -> dict[str, Callable[[int], bytes]]:
    ids40k, ids1k = _template(40_000, False), _template(1_000, True)
    deep_body, wide_body = deep(), wide()
    return {
        "ids40k": lambda n: ids40k.replace(_SLOT, b"%08d" % n),
        "ids1k": lambda n: ids1k.replace(_SLOT, b"%08d" % n),
        "deep": lambda n: deep_body,
        "wide": lambda n: wide_body,
    }


def fake_signature() -> str:
    return "sha256=" + secrets.token_hex(32)


def flood(url: str, seconds: float) -> dict[str, dict[str, int]]:
    """Post the kinds in turn on one connection until ``seconds`` have passed."""
    target = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
    bodies = kinds()
    names = list(bodies)
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        name = names[n % len(names)]
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": fake_signature()}
        conn.request("POST", target.path, body=bodies[name](n), headers=headers)
        resp = conn.getresponse()
        resp.read()
        counts[name][str(resp.status)] = counts[name].get(str(resp.status), 0) + 1
        n += 1
    conn.close()
    return counts


if __name__ == "__main__":
    print(json.dumps(flood(sys.argv[1], float(sys.argv[2]))), flush=True)
