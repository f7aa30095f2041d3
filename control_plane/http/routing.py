"""Declarative routes: one decorator registers the handler, its auth, its pydantic body/query models
and its responses, so the OpenAPI document (``/api/openapi.json``) is generated from the same facts
that the server enforces.

Authentication is not decided here: ``Router.register`` takes an ``Authenticator`` (the app passes
``http.auth.authenticate``), called with each served path's ``AuthMode`` before the handler.

A tenant-scoped operation (``auth="tenant"``) is served twice: at its path with the tenant's API key,
and under ``/api/tenants/{tenant_id}/...`` with the admin token. Handlers read ``request["tenant"]``.

``lean=True`` (hot paths such as Meta's webhook): the handler is registered as it is, without the
wrapper. It takes the request alone, parses and answers itself (a ``web.StreamResponse``); the
declared models still describe it in the OpenAPI document. Only for ``auth="none"`` and no body or
query model, so nothing the wrapper enforces is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control_plane import errors
from control_plane.http.models import OneOf
from control_plane.http.parsing import parse_body, parse_query

Auth = Literal["none", "admin", "tenant", "admin_or_tenant"]
# How a served path is authenticated: a route's ``Auth``, or "admin_for_tenant" for the admin's mirror
# of a tenant route (``/api/tenants/{tenant_id}/...``).
AuthMode = Literal["none", "admin", "tenant", "admin_for_tenant", "admin_or_tenant"]
Handler = Callable[..., Awaitable[Any]]
Body = type[BaseModel] | OneOf


class Authenticator(Protocol):
    """Enforces an ``AuthMode`` on a request before its handler runs (raises ``Unauthenticated`` or
    ``Forbidden``); sets ``request["is_admin"]`` and, for tenant modes, ``request["tenant"]``."""

    async def __call__(self, request: web.Request, mode: AuthMode, /) -> None: ...


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    tags: tuple[str, ...]
    body: Body | None = None
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

    @property
    def body_required(self) -> bool:
        """Whether the route needs a body: an empty one stands for ``{}`` when ``{}`` is valid (every
        field optional), and is refused (400 ``missing_body``) otherwise. The document's
        ``requestBody.required`` says the same."""
        return self.body is not None and not body_accepts_empty(self.body)


def body_accepts_empty(body: Body) -> bool:
    try:
        body.model_validate({})
    except (ValidationError, errors.InvalidInput):
        return False
    return True


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
    """Collects operations from resource modules, then registers them on an app.

    ``tags`` and ``auth`` are the defaults of the routes declared on this router (a resource module's
    tag and its usual authentication); a route may name its own. Every route ends up with an auth."""

    def __init__(self, *, tags: tuple[str, ...] | str = (), auth: Auth | None = None) -> None:
        self.operations: list[Operation] = []
        self.tags = _tags(tags)
        self.auth = auth

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: Auth | None = None,
        tags: tuple[str, ...] | str | None = None,
        body: Body | None = None,
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
        auth = auth or self.auth
        if auth is None:
            raise ValueError(f"{method} {path}: no auth, neither for the route nor for its router")
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
                    tags=self.tags if tags is None else _tags(tags),
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

    def register(self, app: web.Application, authenticate: Authenticator) -> None:
        """Add every operation's routes to ``app``; ``authenticate`` enforces each path's auth mode."""
        for op in self.operations:
            for path, mode in self.served_paths(op):
                handler = op.handler if op.lean else self._wrap(op, mode, authenticate)
                app.router.add_route(op.method, path, handler)

    @staticmethod
    def served_paths(op: Operation) -> list[tuple[str, AuthMode]]:
        if op.auth == "tenant":
            paths: list[tuple[str, AuthMode]] = [(op.path, "tenant")]
            if op.mirror:
                paths.append((admin_path(op.path), "admin_for_tenant"))
            return paths
        return [(op.path, op.auth)]

    @staticmethod
    def _wrap(
        op: Operation, mode: AuthMode, authenticate: Authenticator
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            await authenticate(request, mode)
            kwargs: dict[str, Any] = {}
            if op.query is not None:
                kwargs["query"] = parse_query(request, op.query)
            if op.body is not None:
                limit = op.max_body_bytes or request.app["settings"].max_body_bytes
                kwargs["body"] = await parse_body(request, op.body, limit, required=op.body_required)
            result = await op.handler(request, **kwargs)
            return _to_response(result, op.status)

        handler.__name__ = op.handler.__name__
        return handler


# A path parameter, ``{name}`` or with aiohttp's pattern ``{name:regex}`` (a regex without braces).
PATH_PARAMETER = re.compile(r"{(\w+)(?::([^{}]+))?}")


def path_parameters(path: str) -> dict[str, str | None]:
    """``{name: regex or None}`` of a route path's parameters, in order."""
    return {m[1]: m[2] for m in PATH_PARAMETER.finditer(path)}


def document_path(path: str) -> str:
    """The path as the OpenAPI document names it: ``{key_id:[0-9]+}`` -> ``{key_id}``."""
    return PATH_PARAMETER.sub(lambda m: "{" + m[1] + "}", path)


def _tags(tags: tuple[str, ...] | str) -> tuple[str, ...]:
    return (tags,) if isinstance(tags, str) else tuple(tags)


def admin_path(path: str) -> str:
    """``/api/session/start`` -> ``/api/tenants/{tenant_id}/session/start``."""
    assert path.startswith("/api/"), path
    return "/api/tenants/{tenant_id}/" + path[len("/api/") :]
