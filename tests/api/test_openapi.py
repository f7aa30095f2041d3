"""The OpenAPI document is generated from the routes, the docs page renders from local files, and
schemathesis (bounded examples per operation, derandomized) finds no 5xx and no response that
disagrees with the schema."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from control_plane.api.openapi import build_openapi
from control_plane.app import build_router, create_app
from tests.conftest import ADMIN_TOKEN
from tests.fakes.graph_api import FakeGraphAPI
from tests.support import ThreadedServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12


async def test_openapi_lists_the_public_interface(client):
    doc = await (await client.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/tenants",
        "/api/whatsapp/config",
        "/api/tenants/{tenant_id}/whatsapp/config",
        "/healthz",
        "/readyz",
    ):
        assert path in doc["paths"], path
    docs = await client.get("/docs")
    assert docs.status == 200
    html = await docs.text()
    assert "http://" not in html and "https://" not in html  # no CDN: assets are served locally
    assert (await client.get("/api/static/docs.js")).status == 200


@pytest.fixture
def live_app(make_settings, empty_db):
    # The Graph API is the fake, so a route that calls it answers what it answers (not a 503 for an
    # unreachable graph.facebook.com, a legitimate answer the fuzzer would report as a server error).
    graph = ThreadedServer(web.Application).start()  # an empty app: its loop runs the fake
    fake = graph.run(FakeGraphAPI().start())
    settings = make_settings(SUPERVISOR_ENABLED="false", GRAPH_API_URL=fake.url)
    server = ThreadedServer(lambda: create_app(settings)).start()
    yield server
    server.stop()
    graph.run(fake.close())
    graph.stop()


def _operations(schema):
    for result in schema.get_all_operations():
        yield result.ok() if hasattr(result, "ok") else result


def _fuzz(operation, base_url: str, session: requests.Session, headers: dict[str, str]) -> None:
    @hsettings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case):
        case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, headers=headers, timeout=10)

    run()


def test_schemathesis_finds_no_server_error(live_app):
    resp = requests.post(
        f"{live_app.url}/api/tenants",
        json={"name": "fuzz", "sandbox": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    tenant_key = resp.json()["api_key"]
    schema = schemathesis.openapi.from_url(f"{live_app.url}/api/openapi.json")
    session = requests.Session()
    failures: list[str] = []
    operations = list(_operations(schema))
    assert len(operations) >= 10
    for operation in operations:
        token = ADMIN_TOKEN if operation.path.startswith("/api/tenants") else tenant_key
        try:
            _fuzz(operation, live_app.url, session, {"Authorization": f"Bearer {token}"})
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:800]}")
    assert not failures, "\n\n".join(failures)


MESSAGE_TYPES = {
    "text": ("TextMessageIn", "text"),
    "image": ("ImageMessageIn", "media"),
    "document": ("DocumentMessageIn", "media"),
    "audio": ("AudioMessageIn", "media"),
    "video": ("VideoMessageIn", "media"),
    "sticker": ("StickerMessageIn", "media"),
    "location": ("LocationMessageIn", "location"),
    "template": ("TemplateMessageIn", "template"),
    "interactive": ("InteractiveMessageIn", "interactive"),
    "reaction": ("ReactionMessageIn", "reaction"),
}


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_openapi_documents_every_message_type():
    from control_plane.api.openapi import build_openapi
    from control_plane.app import build_router

    doc = build_openapi(build_router())
    body = doc["paths"]["/api/messages"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    union = _resolve(doc, body)
    variants = [_resolve(doc, ref) for ref in union["oneOf"]]
    by_type = {v["properties"]["type"]["const"]: v for v in variants}
    assert set(by_type) == set(MESSAGE_TYPES)
    for kind, (title, part) in MESSAGE_TYPES.items():
        model = by_type[kind]
        assert model["title"] == title and model["additionalProperties"] is False
        assert {"to", part} <= set(model["required"]), kind
        assert "type" in model["required"] or kind == "text"  # text is the default type
        others = {p for _, p in MESSAGE_TYPES.values()} - {part}
        assert not others & set(model["properties"]), kind  # only its own part
    assert "caption" in by_type["image"]["properties"] and "caption" not in by_type["sticker"]["properties"]
    assert by_type["text"]["properties"]["text"]["maxLength"] == 4096
    # interactive: reply buttons or a list, each shape documented down to its rows.
    interactive = by_type["interactive"]["properties"]["interactive"]
    assert interactive["discriminator"]["propertyName"] == "type"
    shapes = {_resolve(doc, r)["properties"]["type"]["const"]: _resolve(doc, r) for r in interactive["oneOf"]}
    assert set(shapes) == {"button", "list"}
    for shape in shapes.values():
        assert {"type", "body", "action"} <= set(shape["required"])
        assert _resolve(doc, shape["properties"]["body"])["required"] == ["text"]
    buttons = _resolve(
        doc, _resolve(doc, shapes["button"]["properties"]["action"])["properties"]["buttons"]["items"]
    )
    action = _resolve(doc, shapes["button"]["properties"]["action"])
    assert action["properties"]["buttons"]["maxItems"] == 3
    reply = _resolve(doc, buttons["properties"]["reply"])
    assert reply["required"] == ["id", "title"] and reply["properties"]["title"]["maxLength"] == 20
    listing = _resolve(doc, shapes["list"]["properties"]["action"])
    assert {"button", "sections"} <= set(listing["required"])
    section = _resolve(doc, listing["properties"]["sections"]["items"])
    row = _resolve(doc, section["properties"]["rows"]["items"])
    assert {"id", "title"} <= set(row["required"]) and row["properties"]["title"]["maxLength"] == 24


def test_declared_commands_keep_their_operation_ids():
    """The session and sandbox commands are declared by one function each: every handler still names
    its operation (tenant route and admin mirror), as when each was written out."""
    doc = build_openapi(build_router())
    ids = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    session = {f"{c}_session" for c in ("get", "start", "stop", "restart", "logout")}
    sandbox = {"scan", "incoming", "outgoing", "ack", "disconnect", "phone_logout", "crash", "hang", "leak"}
    for name in session | sandbox:
        assert {name, f"{name}_admin"} <= ids, name
    post = doc["paths"]["/api/session/start"]["post"]
    assert post["operationId"] == "start_session" and "202" in post["responses"]
    assert doc["paths"]["/api/sandbox/logout"]["post"]["operationId"] == "phone_logout"
