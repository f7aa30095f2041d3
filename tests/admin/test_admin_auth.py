"""Admin panel auth: the signed session cookie, its CSRF token, login/logout, and the cookie standing in
for the admin token on /api routes (unsafe methods only with the CSRF header) and on Socket.IO."""

from __future__ import annotations

import re

import pytest
import socketio

from control_plane.admin_cookie import COOKIE_NAME, CSRF_HEADER, LOGIN_COOKIE_NAME, SessionSigner
from control_plane.app import create_app
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.support import FakeClock

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


# --- the signer, pure --------------------------------------------------------------------------


def test_session_cookie_round_trip_and_csrf():
    signer = SessionSigner(SECRET_KEY, ADMIN_TOKEN)
    cookie, session = signer.issue(now=1000)
    assert signer.verify(cookie, now=1001) == session
    token = signer.csrf_token(session)
    assert signer.check_csrf(session, token)
    assert not signer.check_csrf(session, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not signer.check_csrf(session, None)
    other, _ = signer.issue(now=1000)
    assert signer.csrf_token(signer.verify(other, now=1001)) != token  # per session


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-2] + "xx",  # forged signature
        lambda c: c.replace(c.split(".")[2], "9999999999"),  # extended expiry
        lambda c: "v2" + c[2:],  # unknown version
        lambda c: "",
        lambda c: "garbage",
    ],
)
def test_tampered_cookies_are_refused(mangle):
    signer = SessionSigner(SECRET_KEY, ADMIN_TOKEN)
    cookie, _ = signer.issue(now=1000)
    assert signer.verify(mangle(cookie), now=1001) is None


def test_expired_revoked_and_rotated_secrets_end_sessions():
    signer = SessionSigner(SECRET_KEY, ADMIN_TOKEN, ttl_s=60)
    cookie, session = signer.issue(now=1000)
    assert signer.verify(cookie, now=1061) is None
    signer.revoke(session, now=1001)
    assert signer.verify(cookie, now=1002) is None
    cookie2, _ = signer.issue(now=1000)
    assert SessionSigner(SECRET_KEY, ADMIN_TOKEN + "-rotated").verify(cookie2, now=1001) is None
    assert SessionSigner(SECRET_KEY + "-rotated", ADMIN_TOKEN).verify(cookie2, now=1001) is None
    assert "**" in repr(signer) and SECRET_KEY not in repr(signer)


# --- over HTTP ---------------------------------------------------------------------------------


async def login(client, token: str = ADMIN_TOKEN):
    page = await client.get("/admin/login")
    assert page.status == 200
    csrf = CSRF_INPUT.search(await page.text()).group(1)
    return await client.post(
        "/admin/login",
        data={"token": token, "csrf_token": csrf, "next": "/admin/tenants"},
        allow_redirects=False,
    )


async def page_csrf(client) -> str:
    resp = await client.get("/admin/tenants")
    assert resp.status == 200
    return CSRF_META.search(await resp.text()).group(1)


@pytest.mark.smoke
async def test_pages_need_a_session(client):
    resp = await client.get("/admin/tenants", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith("/admin/login?next=")
    resp = await client.get("/admin/login")
    cookie = resp.headers["Set-Cookie"]
    assert LOGIN_COOKIE_NAME in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


@pytest.mark.smoke
async def test_wrong_token_gets_a_clear_page_and_no_session(client):
    resp = await login(client, "not-the-admin-token-at-all")
    assert resp.status == 401
    assert "That admin token is not correct" in await resp.text()
    assert COOKIE_NAME + "=" not in resp.headers.get("Set-Cookie", "")
    assert (await client.get("/admin/tenants", allow_redirects=False)).status == 302


@pytest.mark.smoke
async def test_wrong_tokens_slow_the_login_down_and_the_right_one_gets_in_after_a_short_wait(client):
    # before: 5 wrong tokens locked the address out for 300 s, the right token included
    clock = FakeClock()
    clock.drive(client.app)
    for _ in range(5):
        assert (await login(client, token="not-the-token")).status == 401
    resp = await login(client)  # right away: the short wait is not over
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert "Too many wrong tokens. Try again in 1 seconds" in await resp.text()
    assert COOKIE_NAME not in resp.cookies
    clock.advance(1)
    resp = await login(client)
    assert resp.status == 303 and COOKIE_NAME in resp.cookies
    # the success cleared the address: five more wrong tokens are free again
    client.session.cookie_jar.clear()
    for _ in range(5):
        assert (await login(client, token="still-not-the-token")).status == 401


@pytest.mark.smoke
async def test_login_waits_grow_but_stay_short(client):
    clock = FakeClock()
    clock.drive(client.app)
    waits = []
    for _ in range(12):
        resp = await login(client, token="not-the-token")
        if resp.status == 429:
            waits.append(int(resp.headers["Retry-After"]))
            clock.advance(waits[-1])
            resp = await login(client, token="not-the-token")
        assert resp.status == 401
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    resp = await login(client)
    assert resp.status == 429 and resp.headers["Retry-After"] == "30"
    clock.advance(30)
    assert (await login(client)).status == 303


@pytest.mark.smoke
async def test_login_form_needs_its_csrf_token(client):
    await client.get("/admin/login")
    resp = await client.post(
        "/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": "forged"}, allow_redirects=False
    )
    assert resp.status == 403
    assert "expired" in await resp.text()
    assert (await client.get("/admin/tenants", allow_redirects=False)).status == 302


@pytest.mark.smoke
async def test_login_sets_a_strict_httponly_expiring_cookie(client):
    resp = await login(client)
    assert resp.status == 303
    assert resp.headers["Location"] == "/admin/tenants"
    cookies = resp.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith(COOKIE_NAME + "="))
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="):
        assert attr in session_cookie
    assert (await client.get("/admin/tenants")).status == 200


@pytest.mark.smoke
async def test_open_redirects_are_refused(client):
    page = await client.get("/admin/login")
    csrf = CSRF_INPUT.search(await page.text()).group(1)
    resp = await client.post(
        "/admin/login",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf, "next": "//evil.example/admin/"},
        allow_redirects=False,
    )
    assert resp.headers["Location"] == "/admin/tenants"


@pytest.mark.smoke
async def test_cookie_acts_as_admin_on_api_with_csrf_for_unsafe_methods(client):
    await login(client)
    csrf = await page_csrf(client)
    assert (await client.get("/api/tenants")).status == 200
    refused = await client.post("/api/tenants", json={"name": "no-csrf"})
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "csrf_failed"
    wrong = await client.post("/api/tenants", json={"name": "bad-csrf"}, headers={CSRF_HEADER: csrf + "x"})
    assert wrong.status == 403
    created = await client.post(
        "/api/tenants", json={"name": "with-csrf", "sandbox": True}, headers={CSRF_HEADER: csrf}
    )
    assert created.status == 201
    tenant = await created.json()
    # admin mirror of a tenant route
    cfg = await client.get(f"/api/tenants/{tenant['id']}/whatsapp/config")
    assert cfg.status == 200
    # the cookie is not a tenant key
    assert (await client.get("/api/whatsapp/config")).status == 401
    # an explicit (wrong) bearer token wins over the cookie
    wrong_bearer = await client.get("/api/tenants", headers={"Authorization": "Bearer nope-nope-nope"})
    assert wrong_bearer.status == 401


@pytest.mark.smoke
async def test_logout_needs_csrf_and_revokes_the_cookie(client):
    await login(client)
    csrf = await page_csrf(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME].value
    refused = await client.post("/admin/logout", data={"csrf_token": "nope"}, allow_redirects=False)
    assert refused.status == 403
    resp = await client.post("/admin/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login?logged_out=1"
    assert (await client.get("/admin/tenants", allow_redirects=False)).status == 302
    # the old cookie, replayed, no longer works (revoked until it would have expired)
    replay = await client.get("/api/tenants", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
    assert replay.status == 401


@pytest.mark.smoke
async def test_socketio_accepts_the_admin_cookie_and_refuses_without(client, make_tenant):
    tenant = await make_tenant("live", sandbox=True)
    await login(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME].value
    url = str(client.make_url("/")).rstrip("/")

    sio = socketio.AsyncClient(reconnection=False)
    try:
        await sio.connect(
            url,
            headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
            auth={"tenant_id": tenant["id"]},
            transports=["websocket"],
            wait_timeout=10,
        )
        assert sio.connected
    finally:
        await sio.disconnect()

    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(
            url,
            headers={"Cookie": f"{COOKIE_NAME}=v1.forged.1.x"},
            auth={"tenant_id": tenant["id"]},
            transports=["websocket"],
            wait_timeout=10,
        )
    await refused.disconnect()


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("trusted", "proto", "secure"),
    [("127.0.0.1", "https", True), ("127.0.0.0/8, ::1", "http", False), ("10.0.0.0/8", "https", False)],
)
async def test_cookies_are_secure_when_a_trusted_proxy_says_https(
    aiohttp_client, make_settings, empty_db, trusted, proto, secure
):
    app_client = await aiohttp_client(create_app(make_settings(TRUSTED_PROXIES=trusted)))
    forwarded = {"X-Forwarded-Proto": proto, "X-Forwarded-For": "203.0.113.5"}
    page = await app_client.get("/admin/login", headers=forwarded)
    assert ("; Secure" in page.headers["Set-Cookie"]) is secure
    nonce = page.cookies[LOGIN_COOKIE_NAME].value
    csrf = CSRF_INPUT.search(await page.text()).group(1)
    resp = await app_client.post(
        "/admin/login",
        data={"token": ADMIN_TOKEN, "csrf_token": csrf, "next": "/admin/tenants"},
        headers={**forwarded, "Cookie": f"{LOGIN_COOKIE_NAME}={nonce}"},
        allow_redirects=False,
    )
    assert resp.status == 303
    session_cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith(COOKIE_NAME + "="))
    assert ("; Secure" in session_cookie) is secure
