"""The OpenAPI 3.1 document, generated from the routes' pydantic models plus the message shape's JSON
Schema (``control_plane/schemas/message.schema.json``: ``components.schemas.Message``, its ``$defs``
beside it, the message responses referring to it), and a docs page that renders it with a small
vendored script (no CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from control_plane import __version__
from control_plane.api import docs_pages
from control_plane.api.messages import MESSAGE_COMPONENT
from control_plane.api.openapi_examples import add_examples
from control_plane.events import MESSAGE_EVENT_SCHEMAS, message_schema
from control_plane.http.errors import HTTP_CODES, ErrorResponse
from control_plane.http.models import COMPONENT_REF, CONFORMS_TO, OneOf
from control_plane.http.routing import Operation, Router, document_path, path_parameters

STATIC = Path(__file__).resolve().parent / "static"
REF = COMPONENT_REF
ERROR_TEXT = {
    400: "Malformed request (bad JSON)",
    401: "Missing or wrong credentials",
    403: "Not allowed (deactivated tenant, or admin token needed)",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    422: "A field is wrong (named in error.field)",
    429: "Too many failed authentications from this client or for this token's prefix: wait Retry-After",
    503: "A dependency is unavailable; retry",
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel] | OneOf, mode: JsonSchemaMode) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in schema.pop("$defs", {}).items():
            self.components.setdefault(name, sub)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}

    def resolve_conformance(self) -> None:
        """``x-conforms-to`` marks (``http.models.conforms_to``) -> ``allOf`` the named component."""
        for schema in self.components.values():
            component = schema.pop(CONFORMS_TO, None)
            if component is not None:
                if component not in self.components:
                    raise ValueError(f"{CONFORMS_TO}: no component {component}")
                schema["allOf"] = [{"$ref": REF.format(model=component)}]


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _path_schema(regex: str | None) -> dict[str, Any]:
    return {"type": "string"} if regex is None else {"type": "string", "pattern": f"^{regex}$"}


def operation_id(op: Operation, mode: str) -> str:
    """The operation's OpenAPI operationId at a path it is served at (``Router.served_paths``)."""
    return f"{op.handler.__name__}{'_admin' if mode == 'admin_for_tenant' else ''}"


def _operation(op: Operation, path: str, mode: str, schemas: _Schemas) -> dict[str, Any]:
    params = [
        {"name": n, "in": "path", "required": True, "schema": _path_schema(regex)}
        for n, regex in path_parameters(path).items()
    ]
    if op.query is not None:
        qschema = op.query.model_json_schema(mode="validation")
        required = set(qschema.get("required", []))
        for name, prop in qschema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": list(op.tags),
        "operationId": operation_id(op, mode),
    }
    if params:
        out["parameters"] = params
    if mode != "none":
        out["security"] = [{"bearer": []}]
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": _json(schemas.ref(op.body, "validation")),
        }
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        ok["content"] = (
            {ct: {"schema": schemas.ref(op.response, "serialization")} for ct in op.produces}
            if op.produces == ("application/json",)
            else {
                ct: {"schema": schemas.ref(op.response, "serialization")}
                if ct == "application/json"
                else {"schema": {"type": "string"}}
                for ct in op.produces
            }
        )
    elif op.produces != ("application/json",):
        ok["content"] = {ct: {"schema": {"type": "string"}} for ct in op.produces}
    responses: dict[str, Any] = {str(op.status): ok}
    codes = set(op.errors) | {503}
    if mode != "none":
        codes |= {401, 403, 429}
    if mode == "admin_for_tenant" or "{" in path:
        codes.add(404)
    if op.body is not None:
        codes |= {400, 413, 422}
    if op.query is not None:
        codes.add(422)
    err = schemas.ref(ErrorResponse, "serialization")
    for code in sorted(codes):
        content = _json(err)
        content["application/json"]["example"] = _error_example(code)
        responses.setdefault(str(code), {"description": ERROR_TEXT.get(code, "Error"), "content": content})
    for code, spec in op.extra_responses.items():
        responses[str(code)] = spec
    out["responses"] = responses
    return out


def _error_example(status: int) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": HTTP_CODES.get(status, "error"),
        "message": ERROR_TEXT.get(status, "Error"),
    }
    if status == 422:
        error = {
            "code": "missing_field",
            "message": "field 'to' is required",
            "field": "to",
            "errors": [{"field": "to", "code": "missing_field", "message": "field 'to' is required"}],
        }
    return {"error": error}


def message_components() -> dict[str, Any]:
    """The message shape's JSON Schema as OpenAPI components: the message object as ``Message``, each
    of its ``$defs`` (the payload of each message event type, ...) under its own name, references
    rewritten to match. ``Message["x-event-schemas"]`` maps each event type to its payload's schema."""
    schema = message_schema()
    defs = schema.pop("$defs")
    for keyword in ("$schema", "$id"):  # $id would re-base the references below
        schema.pop(keyword)
    schema["x-event-schemas"] = {
        event_type: {"$ref": f"#/$defs/{name}"} for event_type, name in MESSAGE_EVENT_SCHEMAS.items()
    }
    components: dict[str, Any] = _rebase({MESSAGE_COMPONENT: schema, **defs})
    return components


def _rebase(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _component_ref(v) if k == "$ref" else _rebase(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def _component_ref(ref: str) -> str:
    if ref == "#":
        return REF.format(model=MESSAGE_COMPONENT)
    if ref.startswith("#/$defs/"):
        return REF.format(model=ref.removeprefix("#/$defs/"))
    raise ValueError(f"the message schema refers outside itself: {ref}")


def build_openapi(router: Router) -> dict[str, Any]:
    schemas = _Schemas()
    schemas.components.update(message_components())
    paths: dict[str, dict[str, Any]] = {}
    for op in router.operations:
        if not op.openapi:
            continue
        for path, mode in router.served_paths(op):
            paths.setdefault(document_path(path), {})[op.method.lower()] = _operation(op, path, mode, schemas)
    schemas.resolve_conformance()
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "WhatsApp gateway",
            "version": __version__,
            "description": "Multi-tenant WhatsApp gateway. Tenant routes take `Authorization: Bearer "
            "<tenant API key>`; admin routes take the admin token and mirror every tenant "
            "route under `/api/tenants/{tenant_id}/...`. Press **Authorize** to try the routes "
            "here with a key.\n\nWhat happens next (a reply received, a status, a session "
            "change) arrives as **events over Socket.IO**, replayable with `since`: see "
            '[Events](/docs/events).\n\nErrors are one shape: `{"error": {"code", '
            '"message", "field"?, "errors"?}}` (`errors` lists every field found wrong).',
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return add_examples(document)


def setup(app: web.Application, router: Router) -> None:
    document: dict[str, Any] | None = None

    async def openapi_json(request: web.Request) -> web.Response:
        nonlocal document
        if document is None:
            document = build_openapi(router)
        return web.json_response(document)

    async def docs(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.html")

    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    docs_pages.setup(app)
    app.router.add_static("/api/static/", STATIC)
