"""WhatsApp Cloud API (Meta Graph API) client: one shared HTTP session, per-call credentials.

Shapes follow Meta's Cloud API reference (messages, media, templates, errors). Every failure is a
``GraphAPIError`` (the tree is in
``graph_errors.py``); the value types are in ``graph_types.py`` (both re-exported here). The access
token is never logged and never part of a repr; log lines carry phone_number_id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from yarl import URL

from control_plane.db.conversations import is_bsuid
from control_plane.providers.base import MEDIA_KINDS
from control_plane.providers.graph_errors import (
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPITimeout,
    GraphAPIUnavailable,
)
from control_plane.providers.graph_http import GraphHTTP
from control_plane.providers.graph_types import (
    DEFAULT_API_VERSION,
    CloudCredentials,
    MediaInfo,
    PhoneNumberInfo,
    SendResult,
    TemplateInfo,
)

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_GRAPH_API_URL",
    "MEDIA_KINDS",
    "CloudAPIClient",
    "CloudCredentials",
    "GraphAPIAuthError",
    "GraphAPIError",
    "GraphAPITimeout",
    "GraphAPIUnavailable",
    "MediaInfo",
    "PhoneNumberInfo",
    "SendResult",
    "TemplateInfo",
    "recipient_field",
]

logger = logging.getLogger(__name__)

DEFAULT_GRAPH_API_URL = "https://graph.facebook.com"
_CAPTION_KINDS = frozenset({"image", "video", "document"})
_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024  # the largest media Meta accepts (documents)


class CloudAPIClient:
    """Cloud API calls shared by every tenant of the process.

    Credentials come with each call, so one client serves all tenants. Build it with
    ``await CloudAPIClient.create(base_url)`` (owns its session) or pass a session you own.
    Sends and read marks (the dispatcher's hot path: one small JSON POST per message) go over a
    lean keep-alive HTTP/1.1 pool (``http1.py``); media, templates and account calls over the
    aiohttp session (both in ``graph_http.py``).
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
        self._http = GraphHTTP(
            session,
            base_url=base_url,
            timeout=timeout,
            owns_session=owns_session,
            max_connections=max_connections,
        )

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
        await self._http.close()

    async def __aenter__(self) -> CloudAPIClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return self._http.base_url

    # -- sending -----------------------------------------------------------------------------

    async def send_raw(
        self, creds: CloudCredentials, payload: Mapping[str, Any], *, to: str | None = None
    ) -> SendResult:
        """Send one message: ``payload`` holds ``type`` and the per-type part (and ``to`` or
        ``recipient`` unless ``to`` is given here); ``messaging_product`` and ``recipient_type`` are
        filled in. What every ``send_*`` method ends in (through :meth:`send_message`).

        The recipient is a phone number (``to``) or a business-scoped user id (Meta's ``recipient``:
        a BSUID or parent BSUID, for a user known only by it; when both are given Meta takes ``to``)."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **payload}
        if to is not None:
            body[recipient_field(to)] = to
        if not body.get("to") and not body.get("recipient"):
            raise ValueError("send_raw: 'to' (or 'recipient') is required")
        if "type" not in body:
            raise ValueError("send_raw: 'type' is required")
        data = await self._http.post_json(creds, f"{creds.phone_number_id}/messages", body)
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
        return await self.send_message(
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
        return await self.send_message(creds, to, "template", template, reply_to, biz_opaque_callback_data)

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
        return await self.send_message(creds, to, kind, part, reply_to, biz_opaque_callback_data)

    async def send_interactive(
        self,
        creds: CloudCredentials,
        to: str,
        interactive: Mapping[str, Any],
        *,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        return await self.send_message(
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
        return await self.send_message(creds, to, "location", part, reply_to, biz_opaque_callback_data)

    async def send_reaction(
        self,
        creds: CloudCredentials,
        to: str,
        message_id: str,
        emoji: str,
        *,
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        """React to ``message_id``; an empty ``emoji`` removes the reaction."""
        part = {"message_id": message_id, "emoji": emoji}
        return await self.send_message(creds, to, "reaction", part, reply_to, biz_opaque_callback_data)

    async def mark_read(self, creds: CloudCredentials, message_id: str, typing: bool = False) -> bool:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        data = await self._http.post_json(creds, f"{creds.phone_number_id}/messages", body)
        return bool(data.get("success"))

    async def send_message(
        self,
        creds: CloudCredentials,
        to: str,
        kind: str,
        part: Mapping[str, Any],
        reply_to: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> SendResult:
        """Send a message of any ``kind`` whose object (``part``) the caller built; what every
        ``send_*`` method ends in. ``reply_to``: the wamid replied to; ``biz_opaque_callback_data``:
        echoed in this message's status webhooks."""
        payload: dict[str, Any] = {recipient_field(to): to, "type": kind, kind: part}
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
        result = await self._http.request("POST", creds, f"{creds.phone_number_id}/media", data=form)
        return str(result["id"])

    async def get_media(self, creds: CloudCredentials, media_id: str) -> MediaInfo:
        data = await self._http.request(
            "GET", creds, media_id, params={"phone_number_id": creds.phone_number_id}
        )
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
        _, body = await self._http.fetch("GET", creds, URL(url), max_bytes=max_bytes)
        return body

    async def delete_media(self, creds: CloudCredentials, media_id: str) -> bool:
        data = await self._http.request(
            "DELETE", creds, media_id, params={"phone_number_id": creds.phone_number_id}
        )
        return bool(data.get("success"))

    # -- account -----------------------------------------------------------------------------

    async def get_phone_number(self, creds: CloudCredentials) -> PhoneNumberInfo:
        """Fetch the number's profile; the way to validate a tenant's token and phone_number_id."""
        data = await self._http.request(
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
            data = await self._http.request("GET", creds, target, params=params)
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
            target, params = self._http.same_origin(URL(next_url)), {}

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
        return await self._http.request("POST", creds, f"{creds.waba_id}/message_templates", json=body)

    async def delete_template(self, creds: CloudCredentials, name: str) -> bool:
        data = await self._http.request(
            "DELETE", creds, f"{creds.waba_id}/message_templates", params={"name": name}
        )
        return bool(data.get("success"))


def recipient_field(to: str) -> str:
    """The request field naming a recipient: ``recipient`` for a business-scoped user id (BSUID),
    ``to`` for a phone number (Meta's send reference, business-scoped user ids)."""
    return "recipient" if is_bsuid(to) else "to"
