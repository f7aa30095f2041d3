"""The OpenAPI document is generated from the routes, the docs page renders from local files, and
schemathesis (bounded examples per operation, derandomized) finds no 5xx and no response that
disagrees with the schema."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from control_plane.app import create_app
from tests.conftest import ADMIN_TOKEN
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
    settings = make_settings(SUPERVISOR_ENABLED="false")
    server = ThreadedServer(lambda: create_app(settings)).start()
    yield server
    server.stop()


def _operations(schema):
    for result in schema.get_all_operations():
        yield result.ok() if hasattr(result, "ok") else result


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
            case.call_and_validate(
                base_url=live_app.url,
                session=session,
                checks=CHECKS,
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:800]}")
    assert not failures, "\n\n".join(failures)
