"""The Cloud API client's HTTP exchanges: every answer decoded, every failure a ``GraphAPIError``.

Two transports to one origin. Sends and read marks (the dispatcher's hot path: one small JSON POST
per message) go over a lean keep-alive HTTP/1.1 pool (``http1.py``: measured ~100 us of CPU less
per message than aiohttp's client on ``bench/dispatch_bench.py``); media, templates and account
calls over an aiohttp session. The access token is never logged; log lines carry phone_number_id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import aiohttp
from yarl import URL

from control_plane.compact_json import dict_encoder
from control_plane.providers import http1
from control_plane.providers.graph_errors import (
    GraphAPIError,
    GraphAPITimeout,
    GraphAPIUnavailable,
    error_from_response,
)
from control_plane.providers.graph_types import CloudCredentials

logger = logging.getLogger(__name__)


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = dict_encoder(_not_json)  # == json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class GraphHTTP:
    """One origin's pool and session, shared by every tenant (credentials come with each call)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        timeout: aiohttp.ClientTimeout | None = None,
        owns_session: bool = False,
        max_connections: int = 200,
    ) -> None:
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._timeout = timeout or aiohttp.ClientTimeout(total=30.0, sock_connect=5.0)
        self._owns_session = owns_session
        self._pool = http1.HTTP1Pool(
            str(self._base),
            max_connections=max_connections,
            connect_timeout_s=self._timeout.sock_connect or self._timeout.total or 30.0,
        )
        self._headers: dict[str, bytes] = {}  # access token -> its request header lines

    @property
    def base_url(self) -> str:
        return str(self._base)

    async def close(self) -> None:
        await self._pool.close()
        if self._owns_session and not self._session.closed:
            await self._session.close()

    def same_origin(self, url: URL) -> URL:
        # A paging URL pointing elsewhere would carry the tenant's token to another host.
        if url.is_absolute() and url.origin() == self._base.origin():
            return url
        return self._base.with_path(url.path).with_query(url.query)

    def url(self, creds: CloudCredentials, target: str | URL) -> URL:
        if isinstance(target, URL):
            return target
        return self._base / creds.version / target.lstrip("/")

    async def post_json(
        self, creds: CloudCredentials, target: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """POST a JSON body over the lean pool (the hot path); the same answers and errors as
        :meth:`request`."""
        headers = self._headers.get(creds.access_token)
        if headers is None:
            token = creds.access_token
            if not (token.isascii() and token.isprintable()):  # not a header value: let aiohttp refuse it
                return await self.request("POST", creds, target, json=payload)
            if len(self._headers) > 10_000:
                self._headers.clear()
            headers = self._headers[token] = (
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: */*\r\n"
            ).encode()
        pnid = creds.phone_number_id
        path = f"/{creds.version}/{target}"
        body = _encode(payload if isinstance(payload, dict) else dict(payload)).encode()
        try:
            resp = await self._pool.request(
                "POST", path, headers=headers, body=body, timeout_s=self._timeout.total or 30.0
            )
        except (http1.ConnectTimeout, http1.ResponseTimeout) as exc:
            logger.info("graph timeout phone_number_id=%s POST %s", pnid, path)
            raise GraphAPITimeout(
                f"Graph API timed out: POST {path}", maybe_sent=exc.maybe_sent, phone_number_id=pnid
            ) from exc
        except http1.HTTPError as exc:
            logger.info("graph unavailable phone_number_id=%s POST %s: %s", pnid, path, type(exc).__name__)
            raise GraphAPIUnavailable(
                f"Graph API unreachable: {type(exc).__name__}: {exc}",
                maybe_sent=exc.maybe_sent,
                phone_number_id=pnid,
            ) from exc
        text = resp.body.decode("utf-8", errors="replace")
        if resp.status >= 400:
            _raise_error(
                resp.status, text, {"Retry-After": resp.headers.get("retry-after")}, pnid, "POST", path
            )
        return decode(resp.status, text, pnid)

    async def request(
        self, method: str, creds: CloudCredentials, target: str | URL, **kwargs: Any
    ) -> dict[str, Any]:
        """One call over the aiohttp session; its JSON object answer."""
        status, body = await self.fetch(method, creds, self.url(creds, target), **kwargs)
        return decode(status, body.decode("utf-8", errors="replace"), creds.phone_number_id)

    async def fetch(
        self, method: str, creds: CloudCredentials, url: URL, *, max_bytes: int | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        """One HTTP exchange; every failure comes out as a GraphAPIError (see graph_errors.py)."""
        pnid = creds.phone_number_id
        headers = {"Authorization": f"Bearer {creds.access_token}"}
        try:
            async with self._session.request(
                method, url, headers=headers, timeout=self._timeout, **kwargs
            ) as resp:
                if resp.status >= 400:
                    _raise_error(resp.status, await resp.text(), resp.headers, pnid, method, url.path)
                body = await _read(resp, max_bytes, pnid)
        except GraphAPIError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            # Connect timeouts never reached Meta; a read timeout may have been a send that worked.
            maybe_sent = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            logger.info("graph timeout phone_number_id=%s %s %s", pnid, method, url.path)
            raise GraphAPITimeout(
                f"Graph API timed out: {method} {url.path}", maybe_sent=maybe_sent, phone_number_id=pnid
            ) from exc
        except aiohttp.ClientError as exc:
            maybe_sent = not isinstance(exc, aiohttp.ClientConnectorError)
            logger.info(
                "graph unavailable phone_number_id=%s %s %s: %s", pnid, method, url.path, type(exc).__name__
            )
            raise GraphAPIUnavailable(
                f"Graph API unreachable: {type(exc).__name__}: {exc}",
                maybe_sent=maybe_sent,
                phone_number_id=pnid,
            ) from exc
        logger.debug("graph ok phone_number_id=%s %s %s http=%s", pnid, method, url.path, resp.status)
        return resp.status, body


def decode(status: int, text: str, pnid: str) -> dict[str, Any]:
    """A successful answer's JSON object."""
    try:
        data = json.loads(text) if text else {}
    except ValueError as exc:
        raise GraphAPIError(
            f"non-JSON answer from Graph API: {text[:200]!r}", http_status=status, phone_number_id=pnid
        ) from exc
    if not isinstance(data, dict):
        raise GraphAPIError(
            f"unexpected answer from Graph API: {text[:200]!r}", http_status=status, phone_number_id=pnid
        )
    return data


def _raise_error(
    status: int, text: str, headers: Mapping[str, str | None], pnid: str, method: str, path: str
) -> NoReturn:
    error = error_from_response(status, text, headers, pnid)
    logger.info(
        "graph error phone_number_id=%s %s %s http=%s code=%s retryable=%s fbtrace_id=%s",
        pnid,
        method,
        path,
        status,
        error.code,
        error.retryable,
        error.fbtrace_id,
    )
    raise error


async def _read(resp: aiohttp.ClientResponse, max_bytes: int | None, pnid: str) -> bytes:
    if max_bytes is None:
        return await resp.read()
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise GraphAPIError(
            f"media too large: {resp.content_length} bytes", http_status=resp.status, phone_number_id=pnid
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise GraphAPIError(
                f"media larger than {max_bytes} bytes", http_status=resp.status, phone_number_id=pnid
            )
        chunks.append(chunk)
    return b"".join(chunks)
