"""Declarative routes: one decorator registers the handler, its auth, its pydantic body/query models
and its responses, so the OpenAPI document (``/api/openapi.json``) is generated from the same facts
that the server enforces.

A tenant-scoped operation (``auth="tenant"``) is served twice: at its path with the tenant's API key,
and under ``/api/tenants/{tenant_id}/...`` with the admin token. Handlers read ``request["tenant"]``.

``lean=True`` (hot paths such as Meta's webhook): the handler is registered as it is, without the
wrapper. It takes the request alone, parses and answers itself (a ``web.StreamResponse``); the
declared models still describe it in the OpenAPI document. Only for ``auth="none"`` and no body or
query model, so nothing the wrapper enforces is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control_plane import errors
from control_plane.api import auth

Auth = Literal["none", "admin", "tenant", "admin_or_tenant"]
Handler = Callable[..., Awaitable[Any]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    tags: tuple[str, ...]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    max_body_bytes: int | None = None
    produces: tuple[str, ...] = ("application/json",)
    extra_responses: dict[int, dict] = field(default_factory=dict)
    openapi: bool = True
    mirror: bool = True
    lean: bool = False


def _first_error(exc: ValidationError, prefix: str = "") -> errors.InvalidInput:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or None
    if prefix and loc:
        loc = f"{prefix}{loc}"
    kind = err["type"]
    if kind == "extra_forbidden":
        return errors.InvalidInput(f"unknown field '{loc}'", code="unknown_field", field=loc)
    if kind == "missing":
        return errors.InvalidInput(f"field '{loc}' is required", code="missing_field", field=loc)
    msg = err["msg"]
    return errors.InvalidInput(
        f"{loc}: {msg}" if loc else msg, code="invalid_field" if loc else "invalid_body", field=loc
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 past it, checked before and while reading)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
        if length <= request.client_max_size:  # the common case: aiohttp reads exactly that much, once
            return await request.read()
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_decode_json = json.JSONDecoder().decode  # what json.loads uses for a str, without its checks per call


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise errors.BadRequest("request body is empty; expected a JSON object", code="malformed_json")
    try:
        if raw[0] == 0x7B and raw[1:2] != b"\x00":  # "{", then not a NUL: json.loads reads it as UTF-8 too
            return _decode_json(raw.decode("utf-8", "surrogatepass"))
        return json.loads(raw)  # anything else: its encoding detection (UTF-16/32, BOMs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"request body is not valid JSON: {exc}", code="malformed_json") from None


async def parse_body(request: web.Request, model: type[BaseModel], limit: int) -> BaseModel:
    # The body is parsed as JSON whatever Content-Type says (curl's default is form-encoded).
    data = parse_json(await read_body(request, limit))
    if not isinstance(data, dict):
        raise errors.InvalidInput("request body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        data[key] = values if len(values) > 1 else values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def _to_response(result: Any, status: int) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    elif isinstance(result, list):
        result = [r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in result]
    if result is None and status == 204:
        return web.Response(status=204)
    return web.json_response(result, status=status)


class Router:
    """Collects operations from resource modules, then registers them on an app."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        auth: Auth,
        summary: str,
        tags: tuple[str, ...] | str = (),
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        max_body_bytes: int | None = None,
        produces: tuple[str, ...] = ("application/json",),
        extra_responses: dict[int, dict] | None = None,
        openapi: bool = True,
        mirror: bool = True,
        lean: bool = False,
    ):
        if lean and (auth != "none" or body is not None or query is not None):
            raise ValueError("a lean route has auth='none' and parses its own input")

        def decorate(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    auth=auth,
                    summary=summary,
                    tags=(tags,) if isinstance(tags, str) else tuple(tags),
                    body=body,
                    query=query,
                    response=response,
                    status=status,
                    errors=errors,
                    max_body_bytes=max_body_bytes,
                    produces=produces,
                    extra_responses=extra_responses or {},
                    openapi=openapi,
                    mirror=mirror,
                    lean=lean,
                )
            )
            return handler

        return decorate

    def include(self, other: Router) -> None:
        self.operations.extend(other.operations)

    def register(self, app: web.Application) -> None:
        for op in self.operations:
            for path, mode in self.served_paths(op):
                app.router.add_route(op.method, path, op.handler if op.lean else self._wrap(op, mode))

    @staticmethod
    def served_paths(op: Operation) -> list[tuple[str, str]]:
        if op.auth == "tenant":
            paths = [(op.path, "tenant")]
            if op.mirror:
                paths.append((admin_path(op.path), "admin_for_tenant"))
            return paths
        return [(op.path, op.auth)]

    @staticmethod
    def _wrap(op: Operation, mode: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            await auth.authenticate(request, mode)
            kwargs: dict[str, Any] = {}
            if op.query is not None:
                kwargs["query"] = parse_query(request, op.query)
            if op.body is not None:
                limit = op.max_body_bytes or request.app["settings"].max_body_bytes
                kwargs["body"] = await parse_body(request, op.body, limit)
            result = await op.handler(request, **kwargs)
            return _to_response(result, op.status)

        handler.__name__ = op.handler.__name__
        return handler


def admin_path(path: str) -> str:
    """``/api/session/start`` -> ``/api/tenants/{tenant_id}/session/start``."""
    assert path.startswith("/api/"), path
    return "/api/tenants/{tenant_id}/" + path[len("/api/") :]
