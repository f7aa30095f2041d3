"""/docs in Debian's Chromium: Swagger UI (vendored) renders every operation of /api/openapi.json with
its examples, "Try it out" calls this server with a tenant key, the Events page renders docs/EVENTS.md,
and neither page logs a console error (no 404: favicon, source maps). Screenshots under
artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.admin.test_admin_flow import (  # noqa: F401 (fixtures)
    ConsoleWatch,
    browser,
    graph_api,
    open_page,
    shoot,
    start_server,
)
from tests.conftest import ADMIN_TOKEN
from tests.support import unless_installed

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.timeout(180),
    unless_installed(CHROMIUM, "Debian's chromium is not installed"),
]


def test_docs_render_every_operation_try_it_and_events(browser, start_server):  # noqa: F811
    server = start_server()
    page = open_page(browser, server)
    console = ConsoleWatch(page)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    doc = page.request.get("/api/openapi.json").json()
    expected = sorted((m.upper(), p) for p, item in doc["paths"].items() for m in item)

    page.goto("/docs")
    blocks = page.locator(".opblock")
    expect(blocks).to_have_count(len(expected), timeout=90_000)  # the first render is the slow part
    shown = sorted(
        tuple(pair)
        for pair in blocks.evaluate_all(
            """els => els.map(b => [b.querySelector('.opblock-summary-method').textContent.trim(),
                                    b.querySelector('.opblock-summary-path').dataset.path])"""
        )
    )
    assert shown == expected
    expect(page.locator(".info .title")).to_contain_text("WhatsApp gateway")
    expect(page.locator(".info")).to_contain_text("events over Socket.IO")
    shoot(page, "30-docs")

    # an operation opened: its request example is there
    send = page.locator("#operations-messages-send_message")
    send.locator(".opblock-summary").click()
    expect(send.locator(".body-param__example, .highlight-code").first).to_contain_text(
        '"to": "+15551234567"'
    )
    shoot(page, "31-docs-send-message")

    # try it out: authorize with a tenant key, call GET /api/me
    resp = page.request.post(
        "/api/tenants", data={"name": "Docs reader"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    key = resp.json()["api_key"]
    page.click(".auth-wrapper .authorize")
    page.fill(".auth-container input[type=text], .auth-container input[type=password]", key)
    page.click(".auth-btn-wrapper .authorize")
    page.click(".auth-btn-wrapper .btn-done")
    me = page.locator("#operations-tenants-whoami")
    me.locator(".opblock-summary").click()
    me.locator(".try-out__btn").click()
    me.locator(".execute").click()
    expect(me.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    expect(me.locator(".live-responses-table")).to_contain_text("Docs reader")
    shoot(page, "32-docs-try-it")
    console.check("docs")

    # the Events page, linked from /docs
    page.click("#events-link")
    expect(page).to_have_url(re.compile(r"/docs/events$"))
    expect(page.locator("h1")).to_have_text("Events: what the CRM receives, and how")
    expect(page.locator("main table").first).to_be_visible()
    expect(page.locator("main")).to_contain_text("message.received")
    shoot(page, "33-docs-events")
    console.check("events page")
    assert not failed, failed
    page.context.close()
