"""The admin panel end to end, in Debian's Chromium driven by Playwright, against the running app (real
MariaDB, real supervisor and Node bridges on the scripted driver, the fake Graph API):

log in (a wrong token first), create a sandbox tenant (key shown once), start its session, watch the
QR code rotate, scan it from the sandbox panel, see "connected", get a field error from the config
modal then save a good config, receive a message live, reply and watch its ticks. Every page is
checked for console errors and screenshotted at desktop and phone width under artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from control_plane.app import create_app
from tests.conftest import ADMIN_TOKEN, ROOT
from tests.fakes.graph_api import FakeGraphAPI
from tests.support import ThreadedServer, unless_installed

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000  # generous for a loaded machine: every wait is a condition, never a sleep
PNID, WABA, GRAPH_TOKEN = "106540352242922", "102290129340398", "EAAG-admin-panel-test-token"

expect.set_options(timeout=WAIT_MS)
pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.timeout(180),
    unless_installed(CHROMIUM, "Debian's chromium is not installed"),
]


class LoopThread:
    """An asyncio loop in a thread, for the fake Graph API (Playwright's sync API owns this thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ConsoleWatch:
    """Console errors and uncaught exceptions of a page. The browser's own "Failed to load resource"
    line for an HTTP error status is allowed only inside ``expect_http(status)``, for a step that
    provokes that status on purpose (a wrong token, a bad config value)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self._allowed: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        m = re.match(r"Failed to load resource: the server responded with a status of (\d+)", msg.text)
        if m and int(m.group(1)) in self._allowed:
            return
        self.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    @contextlib.contextmanager
    def expect_http(self, status: int) -> Iterator[None]:
        self._allowed.add(status)
        try:
            yield
        finally:
            self._allowed.discard(status)

    def check(self, where: str) -> None:
        assert not self.errors, f"{where}: {self.errors}"


def shoot(page: Page, name: str) -> None:
    """Screenshots at desktop and phone width; the layout must not overflow sideways on the phone."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"))
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    assert overflow <= 1, f"{name}: the page scrolls sideways on a phone ({overflow}px)"


@pytest.fixture
def graph_api():
    loop = LoopThread()
    fake = FakeGraphAPI()
    loop.run(fake.start())
    fake.add_number(PNID, WABA, GRAPH_TOKEN)
    yield fake
    loop.run(fake.close())
    loop.close()


@pytest.fixture
def start_server(make_settings, empty_db, graph_api):
    """Start the app on a free port with these setting overrides (stopped after the test)."""
    started: list[ThreadedServer] = []
    sessions = tempfile.mkdtemp(prefix="gwadm")  # short: browser profile paths have length limits

    def start(**overrides: str) -> ThreadedServer:
        env = {
            "SESSIONS_DIR": sessions,
            "BRIDGE_DRIVER": "scripted",
            "QR_INTERVAL_S": "1",
            "QR_TTL_S": "30",
            "QR_MAX_CYCLES": "60",
            "GRAPH_API_URL": graph_api.url,
            "LOG_LEVEL": "INFO",
            **overrides,
        }
        settings = make_settings(**env)
        srv = ThreadedServer(lambda: create_app(settings)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
    shutil.rmtree(sessions, ignore_errors=True)


@pytest.fixture
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, server: ThreadedServer) -> Page:
    context = browser.new_context(viewport=DESKTOP, base_url=server.url)
    context.set_default_timeout(WAIT_MS)
    return context.new_page()


def log_in(page: Page) -> None:
    page.goto("/admin/login")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/admin/tenants$"))


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def page(browser, server):
    pg = open_page(browser, server)
    yield pg
    pg.context.close()


def test_admin_panel_whole_flow(page: Page, server: ThreadedServer):
    console = ConsoleWatch(page)

    # --- log in: a wrong token gets a clear page, the right one the tenants list -----------------
    page.goto("/admin/tenants")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    expect(page.locator("h1")).to_have_text("Admin log in")
    shoot(page, "01-login")
    page.fill("#token", "this-is-not-the-admin-token")
    with console.expect_http(401):
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("That admin token is not correct")
    shoot(page, "02-login-wrong-token")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/admin/tenants$"))
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "connected")
    console.check("login")

    # --- create a sandbox tenant: its API key is shown once, with a copy button ------------------
    page.click("#new-tenant-button")
    page.fill("#tenant-name", "Acme sandbox")
    page.check("#tenant-sandbox")
    page.click("#create-tenant-submit")
    expect(page.locator("#api-key-dialog")).to_be_visible()
    expect(page.locator("#api-key-value")).to_have_value(re.compile(r"^wgk_"))
    page.click("#copy-api-key")
    expect(page.locator("#copy-api-key")).to_have_text("Copied")
    shoot(page, "03-tenant-created-key")
    page.click("#api-key-dialog [data-close]")  # closing reloads the list, the key is gone
    row = page.locator("tr[data-tenant-id]", has_text="Acme sandbox")
    expect(row).to_be_visible()
    expect(row.locator('[data-field="state"]')).to_have_text("stopped")
    tenant_id = row.get_attribute("data-tenant-id")
    shoot(page, "04-tenants")
    console.check("tenants list")

    # --- tenant page: start, watch the QR rotate, scan it from the sandbox panel -----------------
    row.locator("a.tenant-link").click()
    expect(page).to_have_url(re.compile(rf"/admin/tenants/{tenant_id}$"))
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "connected")
    page.click("#start-button")
    qr = page.locator("#qr-img")
    expect(qr).to_have_attribute("src", re.compile(r"^blob:"))
    first_src, first_attempt = qr.get_attribute("src"), qr.get_attribute("data-attempt")
    expect(page.locator("#qr-meta")).to_contain_text(re.compile(r"Attempt \d+ · \d+ s left"))
    expect(qr).not_to_have_attribute("src", first_src)  # a new code arrived by itself (QR_INTERVAL_S=1)
    expect(qr).not_to_have_attribute("data-attempt", first_attempt)
    expect(page.locator("#session-state")).to_have_text("qr")
    shoot(page, "05-tenant-qr")
    # Scan right after a fresh code loaded, as a person would: not while the page is fetching the next
    # image (that race would only cost a 404 on the image, but it is a console line).
    loaded = qr.get_attribute("data-attempt")
    expect(qr).not_to_have_attribute("data-attempt", loaded)
    page.click("#sandbox-scan")
    expect(page.locator("#connected")).to_be_visible()
    expect(page.locator("#connected")).to_contain_text(re.compile(r"Connected as \+1555\d{7}"))
    expect(page.locator("#session-state")).to_have_text("ready")
    expect(page.locator("#qr-figure")).to_be_hidden()
    shoot(page, "06-tenant-ready")
    console.check("tenant session")

    # --- config modal: a field error in place, then a good save ----------------------------------
    page.click("#configure-button")
    expect(page.locator("#config-dialog")).to_be_visible()
    expect(page.locator("#use-web")).to_be_checked()
    page.click("#config-tab-business")
    page.check("#use-business")
    page.fill("#cfg-phone_number_id", "not-a-number")
    page.fill("#cfg-access_token", GRAPH_TOKEN)
    page.select_option("#cfg-fallback_policy", "web_first")
    page.click("#config-tab-web")  # the error must bring its tab back
    with console.expect_http(422):
        page.click("#config-save")
        error = page.locator('[data-error-for="phone_number_id"]')
        expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.locator("#cfg-phone_number_id")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#config-business")).to_be_visible()
    shoot(page, "07-config-field-error")
    page.fill("#cfg-phone_number_id", PNID)
    page.fill("#cfg-waba_id", WABA)
    page.click("#config-save")
    expect(page.locator("#config-dialog")).to_be_hidden()
    expect(page.locator("#roads")).to_contain_text("Business API")
    expect(page.locator("#roads")).to_contain_text("Web")
    console.check("config modal")

    # --- conversations: a message arrives live, the reply gets its ticks --------------------------
    page.click("#tab-conversations")
    expect(page.locator("#conversation-list")).to_contain_text("No conversations yet")
    page.click("#tab-session")
    page.fill("#sandbox-from", "+15550001111")
    page.fill("#sandbox-text", "Hello! Is my order on its way?")
    page.click("#sandbox-incoming button[type=submit]")
    page.click("#tab-conversations")
    conversation = page.locator("#conversation-list button", has_text="+15550001111")
    expect(conversation).to_be_visible()
    conversation.click()
    expect(page.locator("#messages .msg.inbound")).to_contain_text("Hello! Is my order on its way?")
    # a second message arrives while the thread is open: it appears without a reload
    page.click("#tab-session")
    page.fill("#sandbox-text", "Order #1234, by the way")
    page.click("#sandbox-incoming button[type=submit]")
    page.click("#tab-conversations")
    expect(page.locator("#messages .msg.inbound").last).to_contain_text("Order #1234, by the way")
    page.fill("#send-text", "Yes, it ships today.")
    page.click("#send-button")
    reply = page.locator("#messages .msg.outbound", has_text="Yes, it ships today.")
    expect(reply).to_have_attribute("data-status", "sent")
    expect(reply.locator(".ticks")).to_have_text("✓")
    page.click("#tab-session")
    page.click("#sandbox-delivered")
    page.click("#tab-conversations")
    expect(reply).to_have_attribute("data-status", "delivered")
    page.click("#tab-session")
    page.click("#sandbox-read")
    page.click("#tab-conversations")
    expect(reply).to_have_attribute("data-status", "read")
    expect(reply.locator(".ticks")).to_have_text("✓✓")
    expect(page.locator("#unread-total")).to_be_hidden()  # read while open
    expect(page.locator("#messages .msg")).to_have_count(3)  # live appends never duplicate
    shoot(page, "08-conversation")
    console.check("conversations")

    # --- back on the list: live state and number; log out ----------------------------------------
    page.goto("/admin/tenants")
    row = page.locator(f'tr[data-tenant-id="{tenant_id}"]')
    expect(row.locator('[data-field="state"]')).to_have_text("ready")
    expect(row.locator('[data-field="number"]')).to_have_text(re.compile(r"^\+1555\d{7}$"))
    expect(row).to_contain_text("Business API")
    shoot(page, "09-tenants-live")

    # --- deactivate, reactivate, and delete (cancel once, then confirm) ------------------------
    row.locator('[data-action="toggle-active"]').click()
    expect(row).to_have_class(re.compile(r"\binactive\b"))
    expect(row.locator('[data-action="toggle-active"]')).to_have_text("Reactivate")
    row.locator('[data-action="toggle-active"]').click()
    expect(row.locator('[data-action="toggle-active"]')).to_have_text("Deactivate")
    row.locator('[data-action="delete"]').click()
    expect(page.locator("#delete-dialog")).to_contain_text("Acme sandbox")
    shoot(page, "10-delete-confirmation")
    page.click("#delete-dialog [data-close]")
    expect(page.locator("#delete-dialog")).to_be_hidden()
    expect(row).to_be_visible()
    row.locator('[data-action="delete"]').click()
    page.click("#confirm-delete")
    expect(row).to_have_count(0)
    page.reload()
    expect(page.locator("#tenants-table")).to_contain_text("No tenants yet")
    console.check("deactivate and delete")

    page.click("#logout-button")
    expect(page.locator("#login-notice")).to_have_text("You are logged out.")
    console.check("logout")


def test_qr_expiry_is_said_clearly_then_start_and_stop(browser, start_server):
    server = start_server(QR_INTERVAL_S="1", QR_MAX_CYCLES="2")
    page = open_page(browser, server)
    console = ConsoleWatch(page)
    log_in(page)
    page.click("#new-tenant-button")
    page.fill("#tenant-name", "Never scanned")
    page.check("#tenant-sandbox")
    page.click("#create-tenant-submit")
    page.click("#api-key-open")
    # Codes rotate every second here: on a loaded machine the page can ask for one just as it expires
    # (a 404 the page handles: the next event brings the next code). Only this step may see one.
    with console.expect_http(404):
        page.click("#start-button")
        expect(page.locator("#qr-img")).to_have_attribute("src", re.compile(r"^blob:"))
        expired = page.locator("#qr-expired")
        expect(expired).to_be_visible()
    expect(expired).to_contain_text("The QR code expired")
    expect(page.locator("#session-state")).to_have_text("failed")
    expect(page.locator("#session-reason")).to_have_text("qr_expired")
    expect(page.locator("#qr-figure")).to_be_hidden()
    shoot(page, "11-tenant-qr-expired")
    page.click("#start-button")  # a person asks again: a fresh code
    expect(page.locator("#session-state")).to_have_text("qr")
    expect(expired).to_be_hidden()
    page.click("#stop-button")
    expect(page.locator("#session-state")).to_have_text("stopped")
    expect(page.locator("#qr-message")).to_contain_text("not running")
    console.check("qr expiry")
    page.context.close()
