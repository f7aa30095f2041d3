"""The API reference: every operation's JSON bodies and answers carry an example that validates
against its own schema; /docs is Swagger UI from local files; /docs/events is docs/EVENTS.md."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from control_plane.api.docs_pages import events_page, render_markdown
from control_plane.api.openapi import build_openapi
from control_plane.app import build_router

pytestmark = pytest.mark.smoke


def _media(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                yield f"{method} {path} request", body
            for status, response in op["responses"].items():
                media = response.get("content", {}).get("application/json")
                if media:
                    yield f"{method} {path} {status}", media


def test_every_operation_has_examples_that_fit_their_schemas():
    doc = build_openapi(build_router())
    seen = 0
    for where, media in _media(doc):
        assert "example" in media, where
        validator = Draft202012Validator({**media["schema"], "components": doc["components"]})
        problems = [e.message for e in validator.iter_errors(media["example"])]
        assert not problems, (where, problems)
        seen += 1
    assert seen > 300
    send = doc["paths"]["/api/messages"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert send["to"] and send["type"] == "text" and send["text"]
    invalid = doc["paths"]["/api/messages"]["post"]["responses"]["422"]["content"]["application/json"]
    assert invalid["example"]["error"]["errors"][0]["field"] == "to"


async def test_docs_page_is_swagger_ui_from_local_files(client):
    resp = await client.get("/docs")
    html = await resp.text()
    assert resp.status == 200 and "swagger-ui-bundle.js" in html and 'href="/docs/events"' in html
    assert "http://" not in html and "https://" not in html  # no CDN
    for asset in (
        "/api/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/api/static/vendor/swagger-ui/swagger-ui.css",
        "/api/static/docs.js",
        "/api/static/favicon.svg",
    ):
        assert (await client.get(asset)).status == 200, asset
    bundle = await (await client.get("/api/static/vendor/swagger-ui/swagger-ui-bundle.js")).text()
    assert "sourceMappingURL" not in bundle  # no map is shipped: nothing for a browser to miss


async def test_events_page_renders_events_md(client):
    resp = await client.get("/docs/events")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert "<h1>Events: what the CRM receives, and how</h1>" in html
    assert "<table>" in html and "<code>message.received</code>" in html
    assert 'href="/docs"' in html


def test_markdown_escapes_raw_html(tmp_path):
    assert "<script>" not in render_markdown("hi <script>alert(1)</script>")
    page = tmp_path / "E.md"
    page.write_text("# T <b>\n\n| a | b |\n|---|---|\n| `x` | 1 |\n")
    html = events_page(page)
    assert "<title>T &lt;b&gt; — WhatsApp gateway</title>" in html and "<td><code>x</code></td>" in html
