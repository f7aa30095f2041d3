"""The HTTP layer on its own: the router calls the authenticator it is given (it decides nothing about
credentials itself), parses bodies and queries into models, and answers errors in the one JSON shape.
An app made of just these pieces: no database, no other component."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import pytest
from aiohttp import web
from pydantic import model_validator

from control_plane import errors
from control_plane.http.errors import error_middleware
from control_plane.http.models import OneOf, QueryModel, RequestModel, reports_invalid_input
from control_plane.http.routing import AuthMode, Router, admin_path


class Ping(RequestModel):
    name: str


class Page(QueryModel):
    limit: int = 10


class Cat(RequestModel):
    kind: Literal["cat"] = "cat"
    lives: int

    @model_validator(mode="after")
    @reports_invalid_input
    def _few_lives(self) -> Cat:
        if self.lives > 9:
            raise errors.InvalidInput("a cat has at most 9 lives", code="too_many_lives", field="lives")
        return self


class Dog(RequestModel):
    kind: Literal["dog"]
    good: bool


PET = OneOf("PetIn", {"cat": Cat, "dog": Dog}, key="kind", default="cat", description="A pet")


def make_app(calls: list[tuple[str, AuthMode]]) -> web.Application:
    router = Router()

    @router.route("POST", "/api/ping", auth="tenant", summary="ping", body=Ping, query=Page)
    async def ping(request: web.Request, body: Ping, query: Page) -> dict:
        return {"name": body.name, "limit": query.limit, "tenant": request["tenant"]["id"]}

    @router.route("POST", "/api/pets", auth="none", summary="pets", body=PET, status=201)
    async def pets(request: web.Request, body: Cat | Dog) -> dict:
        return {"model": type(body).__name__}

    @router.route("GET", "/api/secret", auth="admin", summary="secret", status=204)
    async def secret(request: web.Request) -> None:
        return None

    async def authenticate(request: web.Request, mode: AuthMode) -> None:
        calls.append((request.path, mode))
        if mode == "none":
            return
        if request.headers.get("Authorization") != "Bearer ok":
            raise errors.Unauthenticated("no", code="missing_credentials")
        request["tenant"] = {"id": request.match_info.get("tenant_id", "t1")}

    app = web.Application(middlewares=[error_middleware])
    app["settings"] = SimpleNamespace(max_body_bytes=1024)
    router.register(app, authenticate=authenticate)
    return app


@pytest.fixture
async def http(aiohttp_client):
    calls: list[tuple[str, AuthMode]] = []
    client = await aiohttp_client(make_app(calls))
    client.calls = calls
    return client


async def test_the_injected_authenticator_decides_with_each_paths_mode(http):
    ok = {"Authorization": "Bearer ok"}
    resp = await http.post("/api/ping?limit=3", json={"name": "a"}, headers=ok)
    assert resp.status == 200 and await resp.json() == {"name": "a", "limit": 3, "tenant": "t1"}
    resp = await http.post("/api/tenants/t2/ping", json={"name": "b"}, headers=ok)
    assert (await resp.json())["tenant"] == "t2"
    resp = await http.get("/api/secret", headers=ok)
    assert resp.status == 204
    resp = await http.get("/api/secret")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_credentials"
    assert http.calls == [
        ("/api/ping", "tenant"),
        ("/api/tenants/t2/ping", "admin_for_tenant"),
        ("/api/secret", "admin"),
        ("/api/secret", "admin"),
    ]
    resp = await http.post("/api/pets", json={"lives": 3})
    assert resp.status == 201 and http.calls[-1] == ("/api/pets", "none")


async def test_bodies_and_queries_are_validated_with_the_field_named(http):
    ok = {"Authorization": "Bearer ok"}
    cases = [
        ({"name": "a", "x": 1}, "", 422, "unknown_field", "x"),
        ({}, "", 422, "missing_field", "name"),
        ({"name": 5}, "", 422, "invalid_field", "name"),
        ({"name": "a"}, "?limit=x", 422, "invalid_field", "limit"),
        ([1], "", 422, "invalid_body", None),
    ]
    for body, query, status, code, field in cases:
        resp = await http.post(f"/api/ping{query}", json=body, headers=ok)
        error = (await resp.json())["error"]
        assert (resp.status, error["code"], error.get("field")) == (status, code, field), (body, error)
    resp = await http.post("/api/ping", data=b"{", headers=ok)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"
    resp = await http.post("/api/ping", data=b'{"name": "' + b"x" * 2000 + b'"}', headers=ok)
    assert resp.status == 413


async def test_one_of_picks_the_model_by_its_key(http):
    for body, expected in (({"lives": 3}, "Cat"), ({"kind": "dog", "good": True}, "Dog")):
        resp = await http.post("/api/pets", json=body)
        assert resp.status == 201 and (await resp.json()) == {"model": expected}
    cases = [
        ({"kind": "cow"}, "invalid_field", "kind", "kind: Input should be 'cat' or 'dog'"),
        ({"kind": 3}, "invalid_field", "kind", "kind: Input should be 'cat' or 'dog'"),
        ({"kind": "dog"}, "missing_field", "good", "field 'good' is required"),  # no tag in the path
        ({"kind": "dog", "good": True, "lives": 1}, "unknown_field", "lives", "unknown field 'lives'"),
        ({"lives": 10}, "too_many_lives", "lives", "a cat has at most 9 lives"),  # a domain error, as raised
    ]
    for body, code, field, message in cases:
        resp = await http.post("/api/pets", json=body)
        assert resp.status == 422
        error = (await resp.json())["error"]
        listed = error.pop("errors")  # every field error, here the one
        assert error == {"code": code, "message": message, "field": field}, body
        assert listed == [error], body


def test_one_of_is_documented_as_one_of_its_models():
    schema = PET.model_json_schema(ref_template="#/c/{model}", mode="validation")
    assert schema["title"] == "PetIn" and schema["description"] == "A pet"
    assert schema["oneOf"] == [{"$ref": "#/c/Cat"}, {"$ref": "#/c/Dog"}]
    assert set(schema["$defs"]) == {"Cat", "Dog"}


def test_admin_path_mirrors_tenant_routes():
    assert admin_path("/api/session/start") == "/api/tenants/{tenant_id}/session/start"


def test_a_routers_tags_and_auth_are_its_routes_defaults():
    router = Router(tags="pets", auth="tenant")

    @router.route("GET", "/api/pets", summary="list")
    async def list_pets(request: web.Request) -> None: ...

    @router.route("GET", "/api/pets/stats", auth="admin", tags=("stats",), summary="stats")
    async def pet_stats(request: web.Request) -> None: ...

    inherited, own = router.operations
    assert (inherited.auth, inherited.tags) == ("tenant", ("pets",))
    assert (own.auth, own.tags) == ("admin", ("stats",))
    assert Router.served_paths(inherited) == [
        ("/api/pets", "tenant"),
        ("/api/tenants/{tenant_id}/pets", "admin_for_tenant"),
    ]


def test_a_route_without_auth_is_refused():
    with pytest.raises(ValueError, match="no auth"):
        Router(tags="pets").route("GET", "/api/pets", summary="list")
