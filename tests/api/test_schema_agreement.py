"""The requests schemathesis found the document and the server disagreeing on (refused though the
schema called them valid, or the reverse), each checked both ways: the document's JSON Schema and the
server's answer say the same. And every path's 405 names exactly its methods in ``Allow`` (once,
``/api/tenants/{id}/api-keys/rotate`` also named DELETE, from ``.../api-keys/{key_id}``)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# (method, path, body, valid): the body is schema-valid and accepted, or schema-invalid and refused.
BODIES = [
    ("POST", "/api/sandbox/crash", {"exit_code": 38.0}, True),  # 38.0 is an integer to JSON Schema
    ("POST", "/api/sandbox/crash", {"exit_code": 38.5}, False),
    ("POST", "/api/sandbox/ack", {"id": "x", "ack": None, "status": None}, False),
    ("POST", "/api/sandbox/ack", {"id": "x", "ack": 2, "status": "read"}, False),
    ("POST", "/api/sandbox/ack", {"id": "x", "ack": None, "status": "read"}, True),
    ("POST", "/api/sandbox/incoming", {"from": "00000", "text": None, "media": None}, False),
    ("POST", "/api/sandbox/incoming", {"from": "16505551234", "text": "hi"}, True),
    ("POST", "/api/messages", {"to": "0", "text": "hi"}, False),
    ("POST", "/api/messages", {"to": "06505551234", "text": "hi"}, False),
    (
        "POST",
        "/api/messages",
        {"to": "+\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663", "text": "hi"},
        False,
    ),
    ("POST", "/api/messages", {"to": "+1 (650) 555-1234", "text": "hi"}, True),
    ("POST", "/api/messages", {"to": "US.13491208655302741918", "text": "hi"}, True),
    ("POST", "/api/messages", {"to": "16505551234", "type": "reaction", "reaction": {"emoji": "x"}}, False),
    ("POST", "/api/messages", {"to": "16505551234", "type": "sticker", "media": {"size": 1}}, False),
    (
        "POST",
        "/api/messages",
        {
            "to": "16505551234",
            "type": "sticker",
            "media": {"url": "https://x.example/a", "mime_type": "IMAGE/WEBP"},
        },
        True,
    ),
    (
        "POST",
        "/api/messages",
        {
            "to": "16505551234",
            "type": "template",
            "template": {"name": "t", "language": "en", "components": [{}]},
        },
        False,
    ),
    (
        "POST",
        "/api/messages",
        {
            "to": "16505551234",
            "type": "interactive",
            "interactive": {"type": "list", "body": {"text": ""}, "action": {"button": "b", "sections": []}},
        },
        False,
    ),
    ("PUT", "/api/whatsapp/config", {"api_type": None}, False),
    ("PUT", "/api/whatsapp/config", {"access_token": "EAAG1234\nX-Injected: 1"}, False),  # once a 500
    ("PUT", "/api/whatsapp/config", {"verify_token": "       x"}, True),  # taken as sent: 8 characters
    ("POST", "/api/whatsapp/config", {"api_type": "business_api", "waba_id": "3"}, False),
    ("POST", "/api/whatsapp/config", {"fallback_policy": "business_api_only"}, False),
]


@pytest.fixture
async def api(aiohttp_client, make_settings, empty_db):
    from control_plane.app import create_app

    return await aiohttp_client(create_app(make_settings(SUPERVISOR_ENABLED="false")))


async def _tenant(api) -> dict[str, Any]:
    resp = await api.post("/api/tenants", json={"name": "agree", "sandbox": True}, headers=ADMIN)
    assert resp.status == 201
    return await resp.json()


def _body_schema(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    ref = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    return {**ref, "components": doc["components"]}


async def test_document_and_server_agree_on_what_schemathesis_found(api):
    doc = await (await api.get("/api/openapi.json")).json()
    for method, path, body, valid in BODIES:
        tenant = await _tenant(api)  # a fresh one each time: no config stored, no state carried over
        headers = {"Authorization": f"Bearer {tenant['api_key']}"}
        schema_says = jsonschema.Draft202012Validator(_body_schema(doc, method, path)).is_valid(body)
        assert schema_says is valid, (method, path, body)
        resp = await api.request(method, path, json=body, headers=headers)
        got = await resp.json()
        refused = resp.status in (400, 413, 422)
        assert refused is not valid, (method, path, body, resp.status, got)
        assert resp.status != 409 or got["error"]["code"] == "supervisor_disabled", got  # sessions are off


@pytest.mark.parametrize(
    ("cursor", "valid"),
    [("0.1", True), ("1733461800123456.42", True), ("000", False), ("", False), ("1.x", False)],
)
async def test_conversation_cursors_are_positions_the_pattern_describes(api, cursor, valid):
    doc = await (await api.get("/api/openapi.json")).json()
    tenant = await _tenant(api)
    params = doc["paths"]["/api/conversations"]["get"]["parameters"]
    schema = next(p["schema"] for p in params if p["name"] == "cursor")
    assert jsonschema.Draft202012Validator(schema).is_valid(cursor) is valid
    resp = await api.get(
        "/api/conversations",
        params={"cursor": cursor},
        headers={"Authorization": f"Bearer {tenant['api_key']}"},
    )
    assert resp.status == (200 if valid else 422), await resp.text()


async def test_every_405_names_exactly_the_paths_methods(api):
    doc = await (await api.get("/api/openapi.json")).json()
    tenant = await _tenant(api)
    for path, item in doc["paths"].items():
        url = path.replace("{tenant_id}", tenant["id"]).replace("{key_id}", "1")
        url = url.replace("{conversation_id}", "1").replace("{message_id}", "0" * 32)
        declared = {m.upper() for m in item}
        resp = await api.request("TRACE", url, headers=ADMIN)
        allow = {m.strip() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
        assert resp.status == 405 and allow - {"HEAD"} == declared, (path, resp.status, allow, declared)
    rotate = f"/api/tenants/{tenant['id']}/api-keys/rotate"
    assert (await api.delete(rotate, headers=ADMIN)).headers["Allow"] == "POST"


async def test_conversation_pages_follow_each_other_with_position_cursors(api):
    tenant = await _tenant(api)
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    for n in range(3):
        resp = await api.post("/api/messages", json={"to": f"1650555123{n}", "text": "hi"}, headers=headers)
        assert resp.status == 202, await resp.text()
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/conversations", params=params, headers=headers)).json()
        seen += [c["wa_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor.split(".")[1].isdigit()  # <microseconds>.<conversation id>
    assert sorted(seen) == [f"1650555123{n}" for n in range(3)], seen
