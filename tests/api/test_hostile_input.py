"""Hostile input on every route the OpenAPI document lists: path ids that are not plain ASCII
numbers or hex ids, and JSON nested past the limit, are a 4xx with the JSON error shape, never a 5xx
(once, ``/api/conversations/%C2%B9/messages`` was a 500 from ``int('¹')``, ``%D9%A3`` was read as
conversation 3, and a deeply nested body was a RecursionError on every JSON route)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from control_plane import errors
from control_plane.http.parsing import MAX_JSON_DEPTH, json_depth, parse_json, path_int

HOSTILE_SEGMENTS = [
    "%C2%B9",  # superscript one: str.isdigit() says yes, int() says no
    "%D9%A3",  # Arabic-Indic three: int() reads it as 3
    "%EF%BC%93",  # full-width three
    "-1",
    "+1",
    "0",
    "%201",
    "1.0",
    "1e3",
    "99999999999999999999999999",
    "%00",
    "%E2%80%AE",
    "x" * 300,
    "%F0%9F%98%80",
    "%ED%A0%80",  # a lone surrogate, UTF-8 encoded (invalid UTF-8)
]
_PARAM = re.compile(r"\{[^}]+\}")


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def _routes(client) -> list[tuple[str, str]]:
    doc = await (await client.get("/api/openapi.json")).json()
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def test_path_int_takes_ascii_digits_only():
    assert path_int("42") == 42
    for raw in ("¹", "\u0663", "\uff13", "-1", "+1", "0", " 1", "1 ", "1_000", "", "1" * 19):
        assert path_int(raw) is None, raw


def test_json_depth_limit():
    assert parse_json(_deep(MAX_JSON_DEPTH)) is not None
    assert json_depth(parse_json(b"[[], {}, 1]")) == 2
    for levels in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(errors.BadRequest) as info:
            parse_json(_deep(levels))
        assert info.value.code == "too_deep"
    # Many brackets side by side are not depth.
    assert parse_json(b"[" + b",".join([b"[]"] * 10_000) + b"]") is not None


async def _check(resp, what: str) -> dict[str, Any]:
    assert resp.status < 500, f"{what}: {resp.status} {await resp.text()}"
    if resp.status >= 400:
        body = await resp.json()
        assert isinstance(body.get("error"), dict) and body["error"].get("code"), f"{what}: {body}"
        return body
    return {}


async def test_every_route_refuses_hostile_path_ids(client, make_tenant, admin_headers):
    tenant = await make_tenant()
    routes = [(m, p) for m, p in await _routes(client) if _PARAM.search(p)]
    assert len(routes) >= 8, routes
    checked = 0
    for headers in (admin_headers, tenant["headers"]):
        for method, path in routes:
            for segment in HOSTILE_SEGMENTS:
                url = _PARAM.sub(segment, path)
                resp = await client.request(method, url, headers=headers, json={})
                body = await _check(resp, f"{method} {url}")
                assert resp.status in (400, 401, 403, 404, 405, 422), (method, url, resp.status, body)
                checked += 1
            # The tenant's own id with a hostile second parameter (e.g. an API key id).
            if path.count("{") > 1 and path.startswith("/api/tenants/{tenant_id}"):
                for segment in HOSTILE_SEGMENTS:
                    url = _PARAM.sub(segment, path.replace("{tenant_id}", tenant["id"]))
                    await _check(await client.request(method, url, headers=headers, json={}), url)
    assert checked > 100


async def test_conversation_ids_in_other_digits_are_not_found(client, make_tenant):
    tenant = await make_tenant()
    for segment in ("%D9%A3", "%C2%B9", "%EF%BC%93"):
        for method, url in (
            ("GET", f"/api/conversations/{segment}/messages"),
            ("POST", f"/api/conversations/{segment}/read"),
        ):
            resp = await client.request(method, url, headers=tenant["headers"])
            body = await resp.json()
            assert resp.status == 404 and body["error"]["code"] == "conversation_not_found", (url, body)


async def test_every_json_route_refuses_deep_nesting(client, make_tenant, admin_headers):
    tenant = await make_tenant()
    routes = [(m, p) for m, p in await _routes(client) if m in {"POST", "PUT", "PATCH"}]
    assert routes
    for levels in (MAX_JSON_DEPTH + 1, 50_000):
        body = _deep(levels)
        for method, path in routes:
            url = _PARAM.sub(tenant["id"], path)
            headers = {
                **(admin_headers if "/tenants" in path else tenant["headers"]),
                "Content-Type": "application/json",
                "X-Hub-Signature-256": "sha256=" + "0" * 64,
            }
            resp = await client.request(method, url, headers=headers, data=body)
            got = await _check(resp, f"{method} {url}")
            if resp.status == 400:
                assert got["error"]["code"] == "too_deep", (url, got)
    # The webhook (no authentication before the signature) answers too_deep before anything else.
    resp = await client.post(
        "/api/whatsapp/webhook", data=_deep(50_000), headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "too_deep"
