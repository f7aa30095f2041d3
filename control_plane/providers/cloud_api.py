"""WhatsApp Cloud API (Meta Graph API) client: one shared HTTP session, per-call credentials.

Shapes follow shared/reference/cloud-api.md. Every failure is a ``GraphAPIError``::

    GraphAPIError            any failed Graph call: .code .subcode .http_status .details
    │                        .retryable .retry_after_s .scope (from graph_errors.ERROR_TABLE)
    ├── GraphAPIAuthError    scope "auth" (codes 0, 190): the tenant's token is bad or expired
    └── GraphAPIUnavailable  no usable answer: connection refused/reset, timeout (code None,
        │                    retryable). .maybe_sent says whether the request may have reached
        │                    Meta (a send retried after that can duplicate: no idempotency key).
        └── GraphAPITimeout  connect or total timeout

A 5xx without a Graph envelope is a plain ``GraphAPIError`` with ``code=None, retryable=True``.
The access token is never logged and never part of a repr; log lines carry phone_number_id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from control_plane.providers import http1
from control_plane.providers.graph_errors import ErrorScope, classify

logger = logging.getLogger(__name__)

DEFAULT_GRAPH_API_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"
MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})
_CAPTION_KINDS = frozenset({"image", "video", "document"})
_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024  # the largest media Meta accepts (documents)


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


@dataclass(frozen=True)
class CloudCredentials:
    """One tenant's Business API number. The token never appears in repr."""

    phone_number_id: str
    waba_id: str
    access_token: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION

    @property
    def version(self) -> str:
        v = self.api_version.strip("/")
        return v if v.startswith("v") else f"v{v}"


@dataclass(frozen=True, slots=True)
class SendResult:
    wamid: str
    wa_id: str | None  # canonical contact id; may differ from the input (store this one)
    message_status: str | None = (
        None  # only on template sends: accepted | held_for_quality_assessment | paused
    )


@dataclass(frozen=True, slots=True)
class MediaInfo:
    id: str
    url: str
    mime_type: str
    sha256: str
    file_size: int


@dataclass(frozen=True, slots=True)
class PhoneNumberInfo:
    id: str
    display_phone_number: str
    verified_name: str | None
    quality_rating: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    id: str
    name: str
    language: str
    status: str
    category: str | None
    components: list[dict[str, Any]]


def _error_from_response(
    status: int, body: str, headers: Mapping[str, str], pnid: str | None
) -> GraphAPIError:
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


class CloudAPIClient:
    """Cloud API calls shared by every tenant of the process.

    Credentials come with each call, so one client serves all tenants. Build it with
    ``await CloudAPIClient.create(base_url)`` (owns its session) or pass a session you own.
    Sends and read marks (the dispatcher's hot path: one small JSON POST per message) go over a
    lean keep-alive HTTP/1.1 pool (``http1.py``); media, templates and account calls over the
    aiohttp session.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str = DEFAULT_GRAPH_API_URL,
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

    @classmethod
    async def create(
        cls,
        base_url: str = DEFAULT_GRAPH_API_URL,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 200,
    ) -> CloudAPIClient:
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        connector = aiohttp.TCPConnector(limit=max_connections)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return cls(
            session, base_url=base_url, timeout=timeout, owns_session=True, max_connections=max_connections
        )

    async def close(self) -> None:
        await self._pool.close()
        if self._owns_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> CloudAPIClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return str(self._base)

    # -- sending -----------------------------------------------------------------------------

    async def send_raw(
        self, creds: CloudCredentials, payload: Mapping[str, Any], *, to: str | None = None
    ) -> SendResult:
        """Send one message: ``payload`` holds ``type`` and the per-type part (and ``to`` unless
        given here); ``messaging_product`` and ``recipient_type`` are filled in. The generic path
        every ``send_*`` method and the outbox use."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **payload}
        if to is not None:
            body["to"] = to
        if not body.get("to"):
            raise ValueError("send_raw: 'to' is required")
        if "type" not in body:
            raise ValueError("send_raw: 'type' is required")
        data = await self._post_json(creds, f"{creds.phone_number_id}/messages", body)
        try:
            message = data["messages"][0]
            contacts = data.get("contacts") or [{}]
            result = SendResult(
                wamid=message["id"],
                wa_id=contacts[0].get("wa_id"),
                message_status=message.get("message_status"),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise GraphAPIError(
                f"unexpected send response: {data!r:.200}",
                http_status=200,
                phone_number_id=creds.phone_number_id,
            ) from exc
        logger.debug(
            "cloud send ok phone_number_id=%s type=%s wamid=%s",
            creds.phone_number_id,
            body["type"],
            result.wamid,
        )
        return result

    async def send_text(
        self,
        creds: CloudCredentials,
        to: str,
        body: str,
        *,
        preview_url: bool = False,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        return await self._send(
            creds, to, "text", {"body": body, "preview_url": preview_url}, reply_to, biz_opaque_callback_data
        )

    async def send_template(
        self,
        creds: CloudCredentials,
        to: str,
        name: str,
        language: str,
        components: list[dict[str, Any]] | None = None,
        *,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        template: dict[str, Any] = {"name": name, "language": {"code": language, "policy": "deterministic"}}
        if components:
            template["components"] = components
        return await self._send(creds, to, "template", template, reply_to, biz_opaque_callback_data)

    async def send_media(
        self,
        creds: CloudCredentials,
        to: str,
        kind: str,
        *,
        media_id: str | None = None,
        link: str | None = None,
        caption: str | None = None,
        filename: str | None = None,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}")
        if (media_id is None) == (link is None):
            raise ValueError("exactly one of media_id or link is required")
        part: dict[str, Any] = {"id": media_id} if media_id is not None else {"link": link}
        if caption is not None and kind in _CAPTION_KINDS:
            part["caption"] = caption
        if filename is not None and kind == "document":
            part["filename"] = filename
        return await self._send(creds, to, kind, part, reply_to, biz_opaque_callback_data)

    async def send_interactive(
        self,
        creds: CloudCredentials,
        to: str,
        interactive: Mapping[str, Any],
        *,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        return await self._send(
            creds, to, "interactive", dict(interactive), reply_to, biz_opaque_callback_data
        )

    async def send_location(
        self,
        creds: CloudCredentials,
        to: str,
        latitude: float,
        longitude: float,
        *,
        name: str | None = None,
        address: str | None = None,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        part: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
        if name is not None:
            part["name"] = name
        if address is not None:
            part["address"] = address
        return await self._send(creds, to, "location", part, reply_to, biz_opaque_callback_data)

    async def send_reaction(
        self, creds: CloudCredentials, to: str, message_id: str, emoji: str
    ) -> SendResult:
        """React to ``message_id``; an empty ``emoji`` removes the reaction."""
        return await self._send(creds, to, "reaction", {"message_id": message_id, "emoji": emoji}, None, None)

    async def mark_read(self, creds: CloudCredentials, message_id: str, typing: bool = False) -> bool:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        data = await self._post_json(creds, f"{creds.phone_number_id}/messages", body)
        return bool(data.get("success"))

    async def _send(
        self,
        creds: CloudCredentials,
        to: str,
        kind: str,
        part: dict[str, Any],
        reply_to: str | None,
        biz_opaque_callback_data: str | None,
    ) -> SendResult:
        payload: dict[str, Any] = {"to": to, "type": kind, kind: part}
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        if biz_opaque_callback_data is not None:
            payload["biz_opaque_callback_data"] = biz_opaque_callback_data
        return await self.send_raw(creds, payload)

    # -- media -------------------------------------------------------------------------------

    async def upload_media(self, creds: CloudCredentials, data: bytes, mime_type: str, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        form.add_field("file", data, filename=filename, content_type=mime_type)
        result = await self._request("POST", creds, f"{creds.phone_number_id}/media", data=form)
        return str(result["id"])

    async def get_media(self, creds: CloudCredentials, media_id: str) -> MediaInfo:
        data = await self._request("GET", creds, media_id, params={"phone_number_id": creds.phone_number_id})
        return MediaInfo(
            id=str(data["id"]),
            url=data["url"],
            mime_type=data.get("mime_type", ""),
            sha256=data.get("sha256", ""),
            file_size=int(data.get("file_size") or 0),
        )

    async def download_media(
        self, creds: CloudCredentials, url: str, *, max_bytes: int = _MAX_DOWNLOAD_BYTES
    ) -> bytes:
        """Download a media URL from ``get_media`` (short-lived; needs the same Bearer token)."""
        _, body = await self._fetch("GET", creds, URL(url), max_bytes=max_bytes)
        return body

    async def delete_media(self, creds: CloudCredentials, media_id: str) -> bool:
        data = await self._request(
            "DELETE", creds, media_id, params={"phone_number_id": creds.phone_number_id}
        )
        return bool(data.get("success"))

    # -- account -----------------------------------------------------------------------------

    async def get_phone_number(self, creds: CloudCredentials) -> PhoneNumberInfo:
        """Fetch the number's profile; the way to validate a tenant's token and phone_number_id."""
        data = await self._request(
            "GET",
            creds,
            creds.phone_number_id,
            params={"fields": "display_phone_number,verified_name,quality_rating"},
        )
        return PhoneNumberInfo(
            id=str(data.get("id", creds.phone_number_id)),
            display_phone_number=str(data.get("display_phone_number", "")),
            verified_name=data.get("verified_name"),
            quality_rating=data.get("quality_rating"),
            raw=data,
        )

    # -- templates ---------------------------------------------------------------------------

    async def iter_templates(
        self, creds: CloudCredentials, status: str | None = None, *, page_size: int = 100
    ) -> AsyncIterator[TemplateInfo]:
        """Yield every template of the WABA, following ``paging.next``."""
        params: dict[str, str] = {"limit": str(page_size)}
        if status:
            params["status"] = status
        target: str | URL = f"{creds.waba_id}/message_templates"
        while True:
            data = await self._request("GET", creds, target, params=params)
            for item in data.get("data") or []:
                yield TemplateInfo(
                    id=str(item.get("id", "")),
                    name=item["name"],
                    language=item.get("language", ""),
                    status=item.get("status", ""),
                    category=item.get("category"),
                    components=list(item.get("components") or []),
                )
            next_url = (data.get("paging") or {}).get("next")
            if not next_url:
                return
            target, params = self._same_origin(URL(next_url)), {}

    async def list_templates(
        self, creds: CloudCredentials, status: str | None = None, *, page_size: int = 100
    ) -> list[TemplateInfo]:
        return [t async for t in self.iter_templates(creds, status, page_size=page_size)]

    async def create_template(
        self,
        creds: CloudCredentials,
        name: str,
        language: str,
        category: str,
        components: list[dict[str, Any]],
    ) -> dict[str, Any]:
        body = {"name": name, "language": language, "category": category, "components": components}
        return await self._request("POST", creds, f"{creds.waba_id}/message_templates", json=body)

    async def delete_template(self, creds: CloudCredentials, name: str) -> bool:
        data = await self._request(
            "DELETE", creds, f"{creds.waba_id}/message_templates", params={"name": name}
        )
        return bool(data.get("success"))

    # -- transport ---------------------------------------------------------------------------

    def _same_origin(self, url: URL) -> URL:
        # A paging URL pointing elsewhere would carry the tenant's token to another host.
        if url.is_absolute() and url.origin() == self._base.origin():
            return url
        return self._base.with_path(url.path).with_query(url.query)

    def _url(self, creds: CloudCredentials, target: str | URL) -> URL:
        if isinstance(target, URL):
            return target
        return self._base / creds.version / target.lstrip("/")

    async def _post_json(
        self, creds: CloudCredentials, target: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """POST a JSON body over the lean pool (the hot path); the same answers and errors as
        :meth:`_request`."""
        headers = self._headers.get(creds.access_token)
        if headers is None:
            token = creds.access_token
            if not (token.isascii() and token.isprintable()):  # not a header value: let aiohttp refuse it
                return await self._request("POST", creds, target, json=payload)
            if len(self._headers) > 10_000:
                self._headers.clear()
            headers = self._headers[token] = (
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: */*\r\n"
            ).encode()
        pnid = creds.phone_number_id
        path = f"/{creds.version}/{target}"
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
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
            error = _error_from_response(
                resp.status, text, {"Retry-After": resp.headers.get("retry-after")}, pnid
            )
            logger.info(
                "graph error phone_number_id=%s POST %s http=%s code=%s retryable=%s fbtrace_id=%s",
                pnid,
                path,
                resp.status,
                error.code,
                error.retryable,
                error.fbtrace_id,
            )
            raise error
        return self._decode(resp.status, text, pnid)

    @staticmethod
    def _decode(status: int, text: str, pnid: str) -> dict[str, Any]:
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

    async def _request(
        self, method: str, creds: CloudCredentials, target: str | URL, **kwargs: Any
    ) -> dict[str, Any]:
        status, body = await self._fetch(method, creds, self._url(creds, target), **kwargs)
        return self._decode(status, body.decode("utf-8", errors="replace"), creds.phone_number_id)

    async def _fetch(
        self, method: str, creds: CloudCredentials, url: URL, *, max_bytes: int | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        """One HTTP exchange; every failure comes out as a GraphAPIError (see the module docstring)."""
        pnid = creds.phone_number_id
        headers = {"Authorization": f"Bearer {creds.access_token}"}
        try:
            async with self._session.request(
                method, url, headers=headers, timeout=self._timeout, **kwargs
            ) as resp:
                if resp.status >= 400:
                    error = _error_from_response(resp.status, await resp.text(), resp.headers, pnid)
                    logger.info(
                        "graph error phone_number_id=%s %s %s http=%s code=%s retryable=%s fbtrace_id=%s",
                        pnid,
                        method,
                        url.path,
                        resp.status,
                        error.code,
                        error.retryable,
                        error.fbtrace_id,
                    )
                    raise error
                body = await self._read(resp, max_bytes, pnid)
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

    @staticmethod
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
