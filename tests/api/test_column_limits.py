"""No silent truncation on the API, column by column: a value longer than its column is a 422 naming
the field and the limit, the OpenAPI document declares the same limit (``maxLength``), and a value
right at it is stored whole. A body with text that is no Unicode (a lone surrogate, ``"\\ud800"``) is
a 422 ``invalid_unicode`` naming the field: it could be stored nowhere.

``CASES``: (column, route, the body's field, the limit). On MariaDB (strict mode) and SQLite."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.db.metadata import metadata


@dataclass(frozen=True)
class Case:
    column: str  # table.column the field is stored in
    method: str
    path: str  # {tenant_id}: the tenant's id; "tenant" auth when it starts with /api/messag
    field: str  # dotted
    limit: int
    base: dict[str, Any]  # a valid body without the field

    def __str__(self) -> str:
        return f"{self.column}<-{self.field}"

    def body(self, value: str) -> dict[str, Any]:
        body = json.loads(json.dumps(self.base))
        *parents, last = self.field.split(".")
        at = body
        for name in parents:
            at = at[name]
        at[last] = value
        return body


WA = "16505551234"
TEMPLATE = {"fallback_template": {"name": "x", "language": "en_US"}}
CASES = [
    Case("tenants.name", "POST", "/api/tenants", "name", 200, {}),
    Case("tenants.name", "PATCH", "/api/tenants/{tenant_id}", "name", 200, {}),
    Case("api_keys.label", "POST", "/api/tenants/{tenant_id}/api-keys", "label", 100, {}),
    Case(
        "messaging_settings.fallback_template_name", "PUT", "/api/messaging/settings",
        "fallback_template.name", 512, TEMPLATE,
    ),
    Case("outbox.idempotency_key", "POST", "/api/messages", "idempotency_key", 128, {"to": WA, "text": "hi"}),
    Case("whatsapp_config.phone_number_id", "PUT", "/api/whatsapp/config", "phone_number_id", 64, {}),
]  # fmt: skip


def _column_length(column: str) -> int:
    table, name = column.split(".")
    return metadata.tables[table].c[name].type.length


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _max_lengths(doc: dict[str, Any], schema: dict[str, Any], path: list[str]) -> set[int | None]:
    """Every ``maxLength`` the document declares for the string property at ``path`` (through $ref,
    anyOf, oneOf, allOf; a null branch says nothing)."""
    schema = _resolve(doc, schema)
    found: set[int | None] = set()
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found |= _max_lengths(doc, branch, path)
    if not path:
        return found | ({schema.get("maxLength")} if schema.get("type") == "string" else set())
    prop = schema.get("properties", {}).get(path[0])
    if prop is not None:
        found |= _max_lengths(doc, prop, path[1:])
    return found


async def _request(client, case: Case, tenant: dict[str, Any], admin_headers, value: str):
    path = case.path.format(tenant_id=tenant["id"])
    headers = admin_headers if path.startswith("/api/tenants") else tenant["headers"]
    return await client.request(case.method, path, json=case.body(value), headers=headers)


@pytest.mark.smoke
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_value_past_its_column_is_422_and_documented(case, client, make_tenant, admin_headers):
    assert case.limit <= _column_length(case.column)  # the API's limit fits the column
    doc = await (await client.get("/api/openapi.json")).json()
    body_schema = doc["paths"][case.path][case.method.lower()]["requestBody"]["content"]["application/json"]
    assert _max_lengths(doc, body_schema["schema"], case.field.split(".")) == {case.limit}
    tenant = await make_tenant()
    value = "7" * (case.limit + 1)
    resp = await _request(client, case, tenant, admin_headers, value)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == case.field and str(case.limit) in error["message"], error


@pytest.mark.smoke
async def test_values_right_at_the_limit_are_stored_whole(client, make_tenant, admin_headers):
    tenant = await make_tenant("n" * 200)
    got = await (await client.get(f"/api/tenants/{tenant['id']}", headers=admin_headers)).json()
    assert got["name"] == "n" * 200
    resp = await client.post(
        f"/api/tenants/{tenant['id']}/api-keys", json={"label": "l" * 100}, headers=admin_headers
    )
    assert resp.status == 201 and (await resp.json())["label"] == "l" * 100
    name = "t" * 512  # Meta allows template names of 512 characters (the column held 255)
    body = {"fallback_template": {"name": name, "language": "en_US"}}
    resp = await client.put("/api/messaging/settings", json=body, headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    got = await (await client.get("/api/messaging/settings", headers=tenant["headers"])).json()
    assert got["fallback_template"]["name"] == name


@pytest.mark.smoke
@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", "/api/messages", '{"to": "16505551234", "text": "bad \\ud800 text"}', "text"),
        ("POST", "/api/messages", '{"to": "16505551234", "text": "ok", "idempotency_key": "k\\udfff"}',
         "idempotency_key"),
        ("POST", "/api/tenants", '{"name": "\\udc00"}', "name"),
        ("PUT", "/api/messaging/settings", '{"fallback_template": {"name": "a\\ud83d", "language": "en"}}',
         "fallback_template.name"),
    ],
)  # fmt: skip
async def test_text_that_is_no_unicode_is_422_naming_the_field(
    method, path, body, field, client, make_tenant, admin_headers
):
    tenant = await make_tenant()
    headers = admin_headers if path.startswith("/api/tenants") else tenant["headers"]
    resp = await client.request(
        method, path, data=body.encode(), headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_unicode", field), error
    # a well-formed pair (an emoji, escaped as Meta and JSON.stringify do) is text like any other
    ok = await client.post(
        "/api/messages", data=b'{"to": "16505551234", "text": "\\ud83d\\ude00"}', headers=tenant["headers"]
    )
    assert ok.status == 202, await ok.text()
