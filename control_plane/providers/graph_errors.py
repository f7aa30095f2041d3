"""Graph API failures: the error tree, and the one table that says what a failure means.

Pure module (standard library only). Every failed Graph call raises a ``GraphAPIError``::

    GraphAPIError            any failed Graph call: .code .subcode .http_status .details
    │                        .retryable .retry_after_s .scope (from ERROR_TABLE below)
    ├── GraphAPIAuthError    scope "auth" (codes 0, 190): the tenant's token is bad or expired
    └── GraphAPIUnavailable  no usable answer: connection refused/reset, timeout (code None,
        │                    retryable). .maybe_sent says whether the request may have reached
        │                    Meta (a send retried after that can duplicate: no idempotency key).
        └── GraphAPITimeout  connect or total timeout

A 5xx without a Graph envelope is a plain ``GraphAPIError`` with ``code=None, retryable=True``.

The table follows the Cloud API's documented error codes and their retry advice. Key on ``error.code``,
never on HTTP status or titles; the HTTP status only matters when there is no Graph error envelope
at all (5xx from a proxy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorScope(StrEnum):
    """What a failure is about, i.e. what the caller should hold back."""

    AUTH = "auth"  # the tenant's token / config: flag it, stop sending for the tenant
    PERMISSION = "permission"  # the token lacks a permission: flag the config
    APP = "app"  # app / WABA wide rate limit: back off every number of the app
    NUMBER = "number"  # this phone number: throughput, maintenance, blocked, not registered
    RECIPIENT = "recipient"  # this (number, recipient) pair: pair limit, window, undeliverable
    MESSAGE = "message"  # this message's content: invalid parameter, unsupported type
    TEMPLATE = "template"  # the template named in this message
    SERVICE = "service"  # Meta (or the network) had a problem; nothing wrong with us


@dataclass(frozen=True, slots=True)
class Classification:
    retryable: bool
    scope: ErrorScope
    retry_after_s: float | None = None  # suggested backoff before the next attempt
    action: str = ""  # one line for logs and the CRM: what to do about it


_AUTH = Classification(False, ErrorScope.AUTH, None, "token invalid or expired: fix the config")
_PERM = Classification(False, ErrorScope.PERMISSION, None, "missing permission: fix the config")
_BAD_PARAM = Classification(False, ErrorScope.MESSAGE, None, "invalid or missing parameter")
_TEMPLATE = Classification(False, ErrorScope.TEMPLATE, None, "template problem: fix the template")
_UNKNOWN = Classification(True, ErrorScope.SERVICE, 2.0, "Graph API unavailable: retry with backoff")

# code -> classification. One table; everything else derives from it.
ERROR_TABLE: dict[int, Classification] = {
    0: _AUTH,
    190: _AUTH,
    3: _PERM,
    10: _PERM,
    **{code: _PERM for code in range(200, 300)},
    4: Classification(True, ErrorScope.APP, 60.0, "app request limit: back off"),
    80007: Classification(True, ErrorScope.APP, 60.0, "WABA rate limit: back off"),
    130429: Classification(True, ErrorScope.NUMBER, 1.0, "number throughput exceeded: short backoff"),
    131056: Classification(True, ErrorScope.RECIPIENT, 6.0, "pair rate limit: slow down for this recipient"),
    131048: Classification(False, ErrorScope.NUMBER, None, "spam rate limit: slow down, do not retry"),
    368: Classification(False, ErrorScope.NUMBER, None, "number temporarily blocked for policy: stop"),
    131026: Classification(False, ErrorScope.RECIPIENT, None, "message undeliverable"),
    131047: Classification(False, ErrorScope.RECIPIENT, None, "outside the 24 h window: send a template"),
    131051: Classification(False, ErrorScope.MESSAGE, None, "unsupported message type"),
    131062: Classification(
        False, ErrorScope.RECIPIENT, None, "this message cannot go to a BSUID (e.g. authentication templates)"
    ),
    132000: _TEMPLATE,
    132001: _TEMPLATE,
    132005: _TEMPLATE,
    132007: _TEMPLATE,
    132012: _TEMPLATE,
    132015: _TEMPLATE,
    132016: _TEMPLATE,
    133010: Classification(False, ErrorScope.NUMBER, None, "phone number not registered"),
    100: _BAD_PARAM,
    131008: _BAD_PARAM,
    131009: _BAD_PARAM,
    # Not retried by a dispatcher; the hint says when the same recipient may be tried again.
    131049: Classification(False, ErrorScope.RECIPIENT, 86400.0, "marketing cap: wait >= 24 h"),
    1: _UNKNOWN,
    2: _UNKNOWN,
    131000: _UNKNOWN,
    131016: _UNKNOWN,
    131057: Classification(True, ErrorScope.NUMBER, 60.0, "account in maintenance: retry after ~1 min"),
}

_HTTP_5XX = _UNKNOWN
_HTTP_429 = Classification(True, ErrorScope.NUMBER, 1.0, "HTTP 429 without a known code: back off")
_UNLISTED = Classification(False, ErrorScope.MESSAGE, None, "unclassified Graph error: not retried")
UNAVAILABLE = Classification(True, ErrorScope.SERVICE, 1.0, "no answer from the Graph API: retry")


def classify(code: int | None, http_status: int | None = None) -> Classification:
    """Classify a Graph failure by its error code; the HTTP status only when no code is known."""
    if code is not None and code in ERROR_TABLE:
        return ERROR_TABLE[code]
    if http_status is not None and http_status >= 500:
        return _HTTP_5XX
    if http_status == 429:
        return _HTTP_429
    if code is None and http_status is None:
        return UNAVAILABLE
    return _UNLISTED


class GraphAPIError(Exception):
    """A Graph API call failed; see the module docstring for the tree."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        error_type: str | None = None,
        details: str | None = None,
        fbtrace_id: str | None = None,
        retry_after_s: float | None = None,
        phone_number_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.error_type = error_type
        self.details = details
        self.fbtrace_id = fbtrace_id
        self.phone_number_id = phone_number_id
        cls = classify(code, http_status)
        self.retryable: bool = cls.retryable
        self.scope: ErrorScope = cls.scope
        self.action: str = cls.action
        # A server's Retry-After wins over the table's suggestion.
        self.retry_after_s: float | None = retry_after_s if retry_after_s is not None else cls.retry_after_s

    def __str__(self) -> str:
        parts = [self.message]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.subcode is not None:
            parts.append(f"subcode={self.subcode}")
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.details:
            parts.append(f"details={self.details!r}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, subcode={self.subcode!r}, "
            f"http_status={self.http_status!r}, retryable={self.retryable!r}, scope={self.scope.value!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary for storing on a message row or sending to the CRM."""
        return {
            "code": self.code,
            "subcode": self.subcode,
            "http_status": self.http_status,
            "message": self.message,
            "details": self.details,
            "fbtrace_id": self.fbtrace_id,
            "retryable": self.retryable,
            "scope": self.scope.value,
        }


class GraphAPIAuthError(GraphAPIError):
    """The access token was refused (code 0 or 190; subcode 463 expired, 467 invalid)."""


class GraphAPIUnavailable(GraphAPIError):
    """No usable answer from the Graph API (network error or timeout); always retryable."""

    def __init__(self, message: str, *, maybe_sent: bool, phone_number_id: str | None = None) -> None:
        super().__init__(message, phone_number_id=phone_number_id)
        self.maybe_sent = maybe_sent


class GraphAPITimeout(GraphAPIUnavailable):
    """The call timed out (connect or total)."""


def error_from_response(
    status: int, body: str, headers: Mapping[str, str | None], pnid: str | None
) -> GraphAPIError:
    """The error for an HTTP answer >= 400 (its body may or may not be a Graph error envelope)."""
    retry_after = _parse_retry_after(headers.get("Retry-After"))
    envelope: Any = None
    try:
        envelope = json.loads(body).get("error") if body else None
    except (ValueError, AttributeError):
        envelope = None
    if not isinstance(envelope, dict):
        return GraphAPIError(
            f"HTTP {status} from Graph API: {body[:200]!r}",
            http_status=status,
            retry_after_s=retry_after,
            phone_number_id=pnid,
        )
    code = _int_or_none(envelope.get("code"))
    error_data = envelope.get("error_data") or {}
    details = error_data.get("details") if isinstance(error_data, dict) else None
    cls = GraphAPIAuthError if code in (0, 190) else GraphAPIError
    return cls(
        str(envelope.get("message") or "Graph API error"),
        http_status=status,
        code=code,
        subcode=_int_or_none(envelope.get("error_subcode")),
        error_type=envelope.get("type"),
        details=details,
        fbtrace_id=envelope.get("fbtrace_id"),
        retry_after_s=retry_after,
        phone_number_id=pnid,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
