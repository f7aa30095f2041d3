"""The OpenAPI document is generated from the routes and the docs page renders from local files
(schemathesis runs against it in ``test_schemathesis.py``)."""

from __future__ import annotations

from control_plane.api.openapi import build_openapi
from control_plane.app import build_router


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
