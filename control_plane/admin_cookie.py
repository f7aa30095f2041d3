"""Admin panel sessions and CSRF tokens. Pure: standard library only.

The session is a signed cookie, nothing server-side to look up:

    gw_admin = "v1.<sid>.<expires_unix>.<sig>"   sig = HMAC-SHA256(key, "v1.<sid>.<expires_unix>")

``key`` is derived from SECRET_KEY *and* ADMIN_TOKEN, so rotating either one ends every session.
The CSRF token of a session is ``HMAC(key, "csrf.<sid>")``: pages carry it in a ``<meta>`` tag and
in every form; forms send it as ``csrf_token``, scripts as the ``X-CSRF-Token`` header. The login form
(no session yet) is protected the same way with a random pre-login cookie (double submit, signed).

Logout clears the cookie and remembers the sid as revoked until it would have expired anyway
(per process; the cookie's short lifetime bounds what a copied cookie is worth on another node).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE_NAME = "gw_admin"
LOGIN_COOKIE_NAME = "gw_admin_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_TTL_S = 8 * 3600
LOGIN_TTL_S = 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERSION = "v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class AdminSession:
    sid: str
    expires_at: int


@dataclass
class SessionSigner:
    """Issues and checks admin session cookies and their CSRF tokens."""

    secret_key: str
    admin_token: str
    ttl_s: int = SESSION_TTL_S
    _revoked: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        material = (
            b"whatsapp-gateway:admin-session:" + self.secret_key.encode() + b"\0" + self.admin_token.encode()
        )
        self._key = hashlib.sha256(material).digest()

    def __repr__(self) -> str:
        return "SessionSigner(**********)"

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    # --- sessions ---
    def issue(self, now: float | None = None) -> tuple[str, AdminSession]:
        """A fresh session: (cookie value, session)."""
        sid = secrets.token_urlsafe(18)
        expires = int(now if now is not None else time.time()) + self.ttl_s
        body = f"{_VERSION}.{sid}.{expires}"
        return f"{body}.{self._sign(body)}", AdminSession(sid, expires)

    def verify(self, cookie: str | None, now: float | None = None) -> AdminSession | None:
        """The session a cookie carries, or None when it is malformed, forged, expired or revoked."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        _, sid, expires_raw, sig = parts
        if not hmac.compare_digest(sig, self._sign(f"{_VERSION}.{sid}.{expires_raw}")):
            return None
        try:
            expires = int(expires_raw)
        except ValueError:
            return None
        now = now if now is not None else time.time()
        if expires <= now or sid in self._revoked:
            return None
        return AdminSession(sid, expires)

    def revoke(self, session: AdminSession, now: float | None = None) -> None:
        now = now if now is not None else time.time()
        self._revoked = {s: e for s, e in self._revoked.items() if e > now}
        self._revoked[session.sid] = session.expires_at

    # --- CSRF ---
    def csrf_token(self, session: AdminSession) -> str:
        return self._sign(f"csrf.{session.sid}")

    def check_csrf(self, session: AdminSession, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())

    def login_csrf_token(self, login_nonce: str) -> str:
        return self._sign(f"login.{login_nonce}")

    def check_login_csrf(self, login_nonce: str | None, token: str | None) -> bool:
        if not login_nonce or not token or len(login_nonce) > 100:
            return False
        return hmac.compare_digest(token.encode(), self.login_csrf_token(login_nonce).encode())


def new_login_nonce() -> str:
    return secrets.token_urlsafe(18)
