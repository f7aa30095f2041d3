"""Graph API error classification: the one table that says what a failure means.

Pure module (standard library only). Built from the retry table in
shared/reference/cloud-api.md §5. Key on ``error.code``, never on HTTP status or titles;
the HTTP status only matters when there is no Graph error envelope at all (5xx from a proxy).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
