"""Every POST, PUT and PATCH operation in the OpenAPI document answers an empty body as its
``requestBody.required`` says: where the body is optional (or there is none), an empty body, with or
without a Content-Type, is taken as ``{}`` (the same answer as ``{}``); where it is required, an empty
body is one 400 ``missing_body`` naming the body, and ``{}`` a 422 naming a field. (Once, some
optional-body routes answered an empty body 400 ``malformed_json`` and others accepted it.)"""

from __future__ import annotations

import re

import pytest

from tests.conftest import ADMIN_TOKEN

_PARAM = re.compile(r"\{(\w+)\}")
# Meta's webhook is not a JSON API route: it authenticates the raw body's signature first.
NOT_JSON_API = {"/api/whatsapp/webhook"}
EMPTY_BODIES = {
    "no body, no Content-Type": {},
    "no body, Content-Type: application/json": {"headers": {"Content-Type": "application/json"}},
    "whitespace": {"data": b" \r\n"},
    "{} without a Content-Type": {"data": b"{}"},
}


@pytest.fixture
async def api(aiohttp_client, make_settings, empty_db):
    from control_plane.app import create_app

    return await aiohttp_client(create_app(make_settings(SUPERVISOR_ENABLED="false")))


async def _operations(api) -> list[tuple[str, str, dict]]:
    doc = await (await api.get("/api/openapi.json")).json()
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("post", "put", "patch") and path not in NOT_JSON_API
    ]


async def _tenant(api) -> dict:
    resp = await api.post(
        "/api/tenants",
        json={"name": "bodies", "sandbox": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert resp.status == 201
    return await resp.json()


async def test_every_operation_answers_an_empty_body_as_its_schema_says(api):
    tenant, other = await _tenant(api), await _tenant(api)
    operations = await _operations(api)
    optional = required = 0
    for method, path, op in operations:
        # The admin's mirrors act on a second tenant: the first one's key is rotated by the mirror of
        # .../api-keys/rotate, and the tenant routes are called with that key.
        url = _PARAM.sub(lambda m: other["id"] if m[1] == "tenant_id" else "1", path)
        token = ADMIN_TOKEN if path.startswith("/api/tenants") else tenant["api_key"]
        headers = {"Authorization": f"Bearer {token}"}
        body_required = op.get("requestBody", {}).get("required", False)
        answers = {}
        for label, kwargs in EMPTY_BODIES.items():
            resp = await api.request(
                method, url, **{**kwargs, "headers": {**headers, **kwargs.get("headers", {})}}
            )
            got = await resp.json() if resp.content_type == "application/json" else {}
            answers[label] = (resp.status, got.get("error", {}).get("code"))
            where = f"{method} {path} with {label}: {resp.status} {got}"
            assert resp.status < 500, where
            if body_required and label != "{} without a Content-Type":
                assert resp.status == 400 and got["error"]["code"] == "missing_body", where
                name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                assert name in got["error"]["message"], where
            elif body_required:
                named = got["error"].get("field") or got["error"]["code"] == "invalid_body"
                assert resp.status == 422 and named, where
            else:
                assert resp.status not in (400, 413, 415, 422), where
        if body_required:
            required += 1
        else:
            optional += 1
            # Empty, whitespace or {}: accepted alike; what answers is the path's state (a tenant or
            # conversation that does not exist, sessions disabled here, a config created by the
            # first call), never the body.
            assert {s for s, _ in answers.values()} <= {200, 201, 202, 204, 403, 404, 409}, (path, answers)
    assert optional >= 20 and required >= 15, (optional, required)


async def test_optional_bodies_are_documented_optional(api):
    """The document marks the optional bodies, the ones a client may leave out."""
    ops = {(m, p): op for m, p, op in await _operations(api)}
    for key in (
        ("POST", "/api/sandbox/crash"),
        ("POST", "/api/sandbox/disconnect"),
        ("POST", "/api/tenants/{tenant_id}/api-keys/rotate"),
        ("PATCH", "/api/tenants/{tenant_id}"),
        ("PUT", "/api/whatsapp/config"),
    ):
        assert ops[key]["requestBody"]["required"] is False, key
    for key in (("POST", "/api/messages"), ("POST", "/api/tenants"), ("POST", "/api/sandbox/incoming")):
        assert ops[key]["requestBody"]["required"] is True, key
    for key in (("POST", "/api/session/start"), ("POST", "/api/session/stop"), ("POST", "/api/sandbox/scan")):
        assert "requestBody" not in ops[key], key
