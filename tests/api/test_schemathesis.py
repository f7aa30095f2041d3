"""schemathesis over the whole API, a tenant key on the tenant routes and the admin token on the admin
routes (and on every tenant route's admin mirror): the OpenAPI document and the server agree.

Checks: no 5xx, every status, content type and body documented (as before), and also
``positive_data_acceptance`` (a request the schema calls valid is accepted),
``negative_data_rejection`` (one it calls invalid is refused), ``unsupported_method`` (a method a
path lacks is a 405 with an ``Allow``) and ``allow_header_conformance`` (that ``Allow`` names exactly
the path's methods). Phases: examples, coverage (schemathesis's deterministic edge cases, where the
method and negative checks come from) and fuzzing; derandomized, seeded, one worker, no example
database or cache, so two runs send the same requests.

What a valid request may be refused with is derived per operation from the route's own declaration
(``Router.route(errors=...)``), never a blanket list: 2xx, plus 404 only where a path id is drawn by
the fuzzer (pinned ids exist), 409 only where the route declares a conflict (the server's state:
sessions disabled here, a config that exists), and 401/403 only on the unauthenticated webhook routes,
whose signature and verify token are their credentials."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from control_plane.api.openapi import operation_id
from control_plane.app import build_router, create_app
from control_plane.http.routing import Operation, Router
from tests.conftest import ADMIN_TOKEN
from tests.fakes.graph_api import FakeGraphAPI
from tests.support import ThreadedServer

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)
SEED = 20261206
FUZZ_EXAMPLES = 6  # per operation, after the examples and coverage phases
TIME_LIMIT_S = 90.0  # the whole schemathesis run on 2 shared cores
NEGATIVE_REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]
ST = Path(sys.executable).with_name("schemathesis")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_app(make_settings, empty_db):
    # The Graph API is the fake, accepting any token for any number, so a route that calls it answers
    # what it answers (not a 503 for an unreachable graph.facebook.com, nor a 400 for a token the
    # fuzzer made up: neither is the schema's business).
    graph = ThreadedServer(web.Application).start()  # an empty app: its loop runs the fake
    fake = graph.run(FakeGraphAPI(accept_any_credentials=True).start())
    # WARNING: thousands of requests, each logged at DEBUG and captured by pytest, cost more than the
    # fuzzer itself.
    settings = make_settings(SUPERVISOR_ENABLED="false", GRAPH_API_URL=fake.url, LOG_LEVEL="WARNING")
    server = ThreadedServer(lambda: create_app(settings)).start()
    yield server
    server.stop()
    graph.run(fake.close())
    graph.stop()


def _tenant(base_url: str, name: str) -> dict[str, Any]:
    resp = requests.post(
        f"{base_url}/api/tenants",
        json={"name": name, "sandbox": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def accepted_statuses(op: Operation, path: str, pinned: set[str]) -> list[str]:
    """What a schema-valid request to ``op`` at ``path`` may be answered: 2xx, and the refusals the
    route declares that depend on the server's state rather than on the request."""
    statuses = {"2xx"}
    declared = set(op.errors)
    if set(re.findall(r"{(\w+)", path)) - pinned or op.method == "DELETE":
        statuses.add("404")  # a drawn id names nothing; a deleted one is gone
    if 409 in declared:
        statuses.add("409")
    if op.auth == "none":
        statuses |= {str(s) for s in declared & {401, 403}}  # the webhook's signature, verify token
    return sorted(statuses)


def run_config(router: Router, tenant_key: str, tenants: dict[str, str]) -> dict[str, Any]:
    """The schemathesis configuration: credentials, pinned ids and accepted statuses per operation.

    ``tenants``: ``mirror`` (the tenant the admin mirrors act on, the one whose key ``tenant_key``
    is), ``admin`` (the admin's tenant routes), ``doomed`` (the one ``DELETE /api/tenants/{id}``
    deletes)."""
    operations = []
    for op in router.operations:
        if not op.openapi:
            continue
        for path, mode in router.served_paths(op):
            # One filter (several include-* keys would match operations having any of them).
            entry: dict[str, Any] = {"include-operation-id": operation_id(op, mode)}
            pinned: dict[str, str] = {}
            if mode == "admin_for_tenant":
                pinned["tenant_id"] = tenants["mirror"]
                # The mirror runs the tenant route's handler on the same models: its coverage cases
                # (edges, methods, negatives) are run, its random ones are the tenant route's.
                entry["phases"] = {"fuzzing": {"enabled": False}}
            elif "{tenant_id}" in path:
                pinned["tenant_id"] = tenants[
                    "doomed" if op.method == "DELETE" and path.count("{") == 1 else "admin"
                ]
            if mode in ("admin", "admin_for_tenant"):
                entry["headers"] = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            if pinned:
                entry["parameters"] = {f"path.{k}": v for k, v in pinned.items()}
            statuses = accepted_statuses(op, path, set(pinned))
            entry["checks"] = {"positive_data_acceptance": {"expected-statuses": statuses}}
            operations.append(entry)
    return {
        "seed": SEED,
        "workers": 1,
        "headers": {"Authorization": f"Bearer {tenant_key}"},
        "cache": {"enabled": False},
        "generation": {"deterministic": True, "database": "none", "max-examples": FUZZ_EXAMPLES},
        # A 405 is probed with OPTIONS (its Allow is compared with the path's methods) and TRACE.
        # Random cases are valid ones (the negative ones are coverage's: one per way to break each
        # constraint, which random negatives mostly repeat).
        "phases": {
            "stateful": {"enabled": False},
            "coverage": {"unexpected-methods": ["OPTIONS", "TRACE"]},
            "fuzzing": {"generation": {"mode": "positive"}},
        },
        "hooks": "tests.api.schemathesis_hooks",
        "request-timeout": 10,
        # A refusal is a refusal: 413 too (a declared media size past the kind's limit).
        "checks": {"negative_data_rejection": {"expected-statuses": [*NEGATIVE_REFUSALS, "413"]}},
        "operations": operations,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def to_toml(config: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in config.items() if k != "operations"]
    for entry in config.get("operations", []):
        lines.append("\n[[operations]]")
        lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in entry.items())
    return "\n".join(lines) + "\n"


def run_schemathesis(
    base_url: str, config: dict[str, Any], workdir: Path
) -> tuple[int, str, list[str], float]:
    """Run the CLI; returns its exit code, its output, one line per failing operation (from the JUnit
    report) and the seconds it took."""
    (workdir / "schemathesis.toml").write_text(to_toml(config))
    junit = workdir / "junit.xml"
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(ST),
            "--config-file",
            str(workdir / "schemathesis.toml"),
            "--no-color",
            "run",
            f"{base_url}/api/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S * 3,
        check=False,
    )
    elapsed = time.monotonic() - started
    failing = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            for failure in [*case.iter("failure"), *case.iter("error")]:
                first = (failure.get("message") or failure.text or "").strip().splitlines()
                failing.append(f"{case.get('name')}: {first[0] if first else '?'}")
    return proc.returncode, proc.stdout + proc.stderr, failing, elapsed


def test_schemathesis_finds_no_disagreement(live_app, tmp_path, figures):
    mirror = _tenant(live_app.url, "fuzz")
    tenants = {
        "mirror": mirror["id"],
        "admin": _tenant(live_app.url, "fuzz-admin")["id"],
        "doomed": _tenant(live_app.url, "fuzz-doomed")["id"],
    }
    config = run_config(build_router(), mirror["api_key"], tenants)
    code, output, failing, elapsed = run_schemathesis(live_app.url, config, tmp_path)
    summary = re.findall(r"^(?:Test cases:\n\s+.*|=+ .* in [0-9.]+s =+)$", output, re.MULTILINE)
    operations, load = len(config["operations"]), os.getloadavg()[0]
    cases = re.search(r"(\d[\d,]*) generated", output)
    figures(
        "schemathesis (tenant key and admin token, derandomized)",
        operations=operations,
        failing=len(failing),
        cases=cases.group(1) if cases else "?",
        elapsed_s=round(elapsed, 1),
        load=round(load, 1),
    )
    print("\n".join(summary))
    assert not failing and code == 0, "\n".join(failing) + "\n\n" + output[-20000:]
    # 90 s of this machine to itself (~50 s measured); other suites running beside it stretch the wall
    # clock by about the load per core.
    crowded = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert elapsed < TIME_LIMIT_S * crowded, f"schemathesis took {elapsed:.1f}s (load x{crowded:.1f})"
