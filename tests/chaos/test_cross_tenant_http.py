"""The cross-tenant matrix over the live OpenAPI document: it walks every operation the server
documents (not a hand list, so a route added later is checked the day it is added) with two tenants
that each own one object of every kind (tests/chaos/world.py), and asserts:

- without credentials, and with a wrong key, every secured operation is 401; the public ones are
  exactly the documented few;
- tenant B's key on an admin operation (``/api/tenants/...``, with A's ids) is 403, as documented;
- tenant B's key on an operation naming one of A's objects by id is 404 (A's own key: 200 on reads);
- the admin's mirror of B (``/api/tenants/{B}/...``) naming A's objects is 404;
- B's key on every other tenant operation answers as documented, never 5xx;
- no answer to B, whatever its status, contains anything of A's (ids, keys, numbers, texts, names),
  and A's objects read the same before and after everything B tried.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest

from tests.chaos.world import ADMIN, Owned, missing_kinds

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(240)]

PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/whatsapp/webhook"),  # Meta's handshake: the verify token is its credential
    ("POST", "/api/whatsapp/webhook"),  # Meta's deliveries: the signature is their credential
}
WRONG = {"Authorization": "Bearer wgk_" + "0" * 43}
PARAM = re.compile(r"{(\w+)}")
# Fields that move by themselves between two reads (not B's doing).
VOLATILE = {"last_used_at", "uptime_s", "memory_bytes"}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def _fill(path: str, values: dict[str, str]) -> str:
    return PARAM.sub(lambda m: values[m.group(1)], path)


def _is_admin(path: str) -> bool:
    return path.startswith("/api/tenants")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class Matrix:
    def __init__(self, gateway, a: Owned, b: Owned) -> None:
        self.gw, self.a, self.b = gateway, a, b
        self.statuses: Counter[int] = Counter()
        self.calls = 0
        self.cross = 0
        self.problems: list[str] = []

    async def call(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        body = {} if method in ("POST", "PUT", "PATCH") else None
        async with self.gw.http.request(method, self.gw.url + path, headers=headers, json=body) as resp:
            text = await resp.text()
        self.calls += 1
        self.statuses[resp.status] += 1
        return resp.status, text

    def expect(self, what: str, status: int, text: str, allowed: set[int], op: dict[str, Any]) -> None:
        documented = {int(c) for c in op["responses"]}
        if status not in allowed or status not in documented:
            self.problems.append(f"{what}: {status} (expected {sorted(allowed)}) {text[:200]}")
        leaked = self.a.leaked(text)
        if leaked:
            self.problems.append(f"{what}: A's data in the answer to another caller: {leaked}")

    def values(self, path: str) -> list[dict[str, str]]:
        """Every combination of A's ids for the path's parameters (one per id of the last one)."""
        names = PARAM.findall(path)
        for name in names:
            if name not in self.a.ids:
                self.problems.append(
                    f"{path}: no object of A for path parameter {{{name}}}: add one to world.py"
                )
                return []
        fixed = {n: self.a.ids[n][0] for n in names}
        if not names:
            return [fixed]
        last = names[-1]
        return [{**fixed, last: value} for value in self.a.ids[last]]

    async def snapshot(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A's objects as A (and the admin, for A's admin objects) reads them."""
        seen: dict[str, Any] = {}
        for method, path, op in _operations(doc):
            if method != "GET" or "security" not in op or "session" in path or path == "/api/tenants":
                continue
            headers = ADMIN if _is_admin(path) else self.a.headers
            for values in self.values(path):
                url = _fill(path, values)
                status, text = await self.call("GET", url, headers)
                seen[url] = (status, _strip(json.loads(text)) if text.startswith(("{", "[")) else text)
        return seen


async def test_tenant_b_never_reaches_tenant_a_through_any_documented_route(
    gateway, two_tenants, sync_engine, figures
):
    a, b = two_tenants
    assert missing_kinds(sync_engine, a.id) == [], "A owns no object of these kinds: add them to world.py"
    assert missing_kinds(sync_engine, b.id) == ["session_state"]  # B's session never ran
    async with gateway.http.get(gateway.url + "/api/openapi.json") as resp:
        doc = await resp.json()
    m = Matrix(gateway, a, b)
    before = await m.snapshot(doc)
    operations = _operations(doc)
    public = {(method, path) for method, path, op in operations if "security" not in op}
    assert public == PUBLIC, f"undocumented public operations: {sorted(public - PUBLIC)}"

    for method, path, op in operations:
        if (method, path) in PUBLIC:
            continue
        params = PARAM.findall(path)
        for values in m.values(path):
            url = _fill(path, values)
            for label, headers in (("no credentials", {}), ("wrong key", WRONG)):
                status, text = await m.call(method, url, headers)
                m.expect(f"{method} {url} {label}", status, text, {401}, op)
            if _is_admin(path):
                status, text = await m.call(method, url, b.headers)
                m.expect(f"{method} {url} B's key", status, text, {403}, op)
                if params != ["tenant_id"] and params:
                    # the admin's mirror of B naming A's objects
                    status, text = await m.call(method, _fill(path, {**values, "tenant_id": b.id}), ADMIN)
                    m.cross += 1
                    m.expect(f"{method} {path} admin for B with A's ids", status, text, {404}, op)
            elif params:
                status, text = await m.call(method, url, b.headers)
                m.cross += 1
                m.expect(f"{method} {url} B's key on A's object", status, text, {404}, op)
                if method == "GET":  # the id is real: A reads it
                    status, text = await m.call(method, url, a.headers)
                    if status != 200:
                        m.problems.append(f"{method} {url} A's own key: {status} {text[:200]}")
            else:
                status, text = await m.call(method, url, b.headers)
                ok = {int(c) for c in op["responses"] if not c.startswith("5") and c not in ("401", "429")}
                m.expect(f"{method} {url} B's key", status, text, ok, op)

    after = await m.snapshot(doc)
    changed = sorted(url for url in before if before[url] != after.get(url))
    figures(
        "cross-tenant matrix (HTTP)",
        operations=len(operations),
        public=len(public),
        calls=m.calls,
        cross_tenant_attempts=m.cross,
        problems=len(m.problems),
        a_objects_changed=len(changed),
        statuses=dict(sorted(m.statuses.items())),
    )
    assert not m.problems, "\n".join(m.problems)
    assert not changed, f"A's objects changed while B tried: {changed}"
    assert m.cross >= 6 and m.calls > 3 * len(operations)
