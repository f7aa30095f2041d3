"""One JSON error shape for every 4xx/5xx: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from control_plane import errors
from control_plane.db.engine import DatabaseUnavailable

log = logging.getLogger(__name__)

STATUS = {
    errors.BadRequest: 400,
    errors.InvalidInput: 422,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.TooManyAttempts: 429,
    errors.Unavailable: 503,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class FieldError(BaseModel):
    field: str
    code: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    errors: list[FieldError] | None = Field(
        default=None,
        description="Every field found wrong, when the error is about fields (the first is also "
        "code/message/field): a form can show them all at once",
    )


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    error: ErrorBody


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Any = None,
    field_errors: list[dict[str, str]] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if field_errors:
        body["errors"] = field_errors
    return web.json_response({"error": body}, status=status, headers=headers)


def status_for(exc: errors.GatewayError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _is_db_outage(exc: BaseException) -> bool:
    if isinstance(exc, (DatabaseUnavailable, OperationalError, PoolTimeout, ConnectionRefusedError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except errors.GatewayError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.TooManyAttempts) else None
        return error_response(
            status_for(exc), exc.code, exc.message, exc.field, headers=headers, field_errors=exc.field_errors
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"no route for {request.method} {request.path}"
        if exc.status == 413:
            message = "request body is too large"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return error_response(exc.status, HTTP_CODES.get(exc.status, "error"), message, headers=headers)
    except Exception as exc:
        if _is_db_outage(exc):
            log.warning(
                "database unavailable during %s %s: %s", request.method, request.path, type(exc).__name__
            )
            return error_response(
                503,
                "database_unavailable",
                "the database is unavailable; retry later",
                headers={"Retry-After": "1"},
            )
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
