"""Secrets at rest and API keys.

- Business API secrets are encrypted with Fernet, keyed from SECRET_KEY (HKDF-free SHA-256 derivation
  is enough: SECRET_KEY is already high-entropy).
- API keys are random (32 bytes), shown once, stored as SHA-256 hashes and compared in constant time.
- Secrets a person chooses and we must find rows by (the webhook verify token) are stored as a keyed
  hash, HMAC-SHA256 under a key derived from SECRET_KEY (``SecretBox.keyed_hash``): a leaked table
  cannot be reversed with a dictionary without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken

API_KEY_PREFIX = "wgk_"


class SecretBox:
    """Encrypts and decrypts short secrets with a key derived from SECRET_KEY."""

    def __init__(self, secret_key: str) -> None:
        digest = hashlib.sha256(b"whatsapp-gateway:fernet:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._hash_key = hashlib.sha256(b"whatsapp-gateway:keyed-hash:" + secret_key.encode()).digest()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with this SECRET_KEY") from None

    def keyed_hash(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` (hex, 64 characters), keyed from SECRET_KEY."""
        return hmac.new(self._hash_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "SecretBox(**********)"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The first characters, kept in clear so an admin can tell keys apart."""
    return key[: len(API_KEY_PREFIX) + 6]


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def mask(value: str | None) -> str | None:
    """How a write-only secret is shown on read."""
    return "********" if value else None
