"""Domain errors. Deep code raises these; only the HTTP layer (http/errors.py) maps them to statuses.

GatewayError
├── InvalidInput          a value is wrong (names the field)          -> 422
│   └── BadRequest        the request itself is malformed             -> 400
├── Unauthenticated       missing or wrong credentials                -> 401
├── Forbidden             authenticated, but not allowed (inactive)   -> 403
├── NotFound              no such object *for this tenant*            -> 404
├── Conflict              clashes with existing state                 -> 409
├── PayloadTooLarge       body over the route's limit                 -> 413
├── TooManyAttempts       failed authentications: wait retry_after_s  -> 429 + Retry-After
└── Unavailable           a dependency is down; retry later           -> 503
"""

from __future__ import annotations

import math
from typing import Self


class GatewayError(Exception):
    """``field_errors``: every field found wrong, ``[{"field", "code", "message"}, ...]``, when a check
    reports several at once (the first is also ``code``/``message``/``field``); a single error about a
    field reports itself."""

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        field_errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.field = field
        self._field_errors = field_errors

    @property
    def field_errors(self) -> list[dict[str, str]] | None:
        if self._field_errors:
            return self._field_errors
        if self.field is None:
            return None
        return [{"field": self.field, "code": self.code, "message": self.message}]

    @classmethod
    def all_of(cls, found: list[GatewayError]) -> Self:
        """One error reporting every one of ``found`` (its first as the main error)."""
        first = found[0]
        listed = [e for f in found for e in (f.field_errors or [])]
        return cls(first.message, code=first.code, field=first.field, field_errors=listed or None)


class InvalidInput(GatewayError):
    code = "invalid"


class BadRequest(InvalidInput):
    code = "bad_request"


class Unauthenticated(GatewayError):
    code = "unauthorized"


class Forbidden(GatewayError):
    code = "forbidden"


class NotFound(GatewayError):
    code = "not_found"


class Conflict(GatewayError):
    code = "conflict"


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"


class TooManyAttempts(GatewayError):
    """Refused without a look at the credential: too many failures lately (auth_throttle.py)."""

    code = "too_many_attempts"

    def __init__(self, retry_after_s: float, what: str = "too many failed authentication attempts") -> None:
        self.retry_after_s = retry_after_s
        self.retry_after = max(1, math.ceil(retry_after_s))  # whole seconds: the Retry-After header
        super().__init__(f"{what}; retry in {self.retry_after}s")


class Unavailable(GatewayError):
    code = "unavailable"
