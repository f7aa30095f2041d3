"""The Cloud API road: a stored message -> a typed ``CloudAPIClient`` call -> an ``Outcome``.

A send, in order: resolve the message replied to (and a reaction's target) to Meta's ids and upload
base64 media; pass the per-number window guard (``Pacer.window_acquire``); call the client. Every
send carries ``biz_opaque_callback_data = <our message id>`` (crash recovery matches the status
webhooks on it). The recipient is the conversation's address: a phone number (Meta's ``to``), or the
contact's business-scoped user id when the number is unknown (Meta's ``recipient``; the client
picks the field). Then the answer:

- accepted: ``Sent`` (with the contact's canonical wa_id when Meta answers another one; a send to a
  BSUID answers none)
- no answer: ``Unknown`` if the request may have reached Meta, else ``Retryable``
- stored content the client cannot express (no media source, bad base64): ``Failed``
- a Graph error pushes the governor back (130429 / bare 429: the number; 131056: the pair; 4 and
  80007: the app), and a refused token (auth / permission scope) blocks the road for the tenant for
  ``block_s`` (following messages fall back when the policy allows); then ``Retryable`` or
  ``Failed`` by the error table (``graph_errors.ERROR_TABLE``).
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from control_plane.db.messages import canonical_wa_id
from control_plane.providers.base import (
    CLOUD,
    MEDIA_KINDS,
    Failed,
    OutboundMessage,
    Outcome,
    ResolveReference,
    Retryable,
    Sent,
    Unknown,
)
from control_plane.providers.cloud_api import CloudAPIClient
from control_plane.providers.graph_errors import ErrorScope, GraphAPIError, GraphAPIUnavailable
from control_plane.providers.graph_types import CloudCredentials, SendResult

log = logging.getLogger(__name__)

BLOCK_S = 60.0  # a refused token keeps the tenant's Cloud road closed this long
_BLOCKING_SCOPES = (ErrorScope.AUTH, ErrorScope.PERMISSION)

SendCall = Callable[[], Awaitable[SendResult]]


class Pacer(Protocol):
    """What the Cloud road uses of the rate governor (``messaging.governor.Governor``)."""

    async def window_acquire(self, key: str, limit: int) -> Any: ...

    def window_release(self, win: Any) -> None: ...

    async def penalize(self, key: str, seconds: float) -> None: ...

    async def penalize_pair(self, number_key: str, recipient: str, seconds: float) -> None: ...


class CloudProvider:
    """Sends through the Cloud API; one instance serves every tenant (credentials come with each
    message). ``client`` None: the Business API is not available in this process."""

    name = CLOUD

    def __init__(
        self,
        client: CloudAPIClient | None,
        pacer: Pacer,
        resolve: ResolveReference,
        *,
        rate_per_s: float,
        block_s: float = BLOCK_S,
    ) -> None:
        self.client = client
        self.pacer = pacer
        self._resolve = resolve
        self._window_limit = max(1, math.floor(rate_per_s))
        self._block_s = block_s
        self._blocked: dict[str, tuple[str, float]] = {}  # tenant -> (why, until: monotonic)

    def blocked(self, tenant_id: str) -> str | None:
        """Why the tenant's Cloud road is closed right now (None: it is open)."""
        entry = self._blocked.get(tenant_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            self._blocked.pop(tenant_id, None)
            return None
        return entry[0]

    def unblock(self, tenant_id: str) -> None:
        """The tenant's config changed: try the road again."""
        self._blocked.pop(tenant_id, None)

    async def send(self, message: OutboundMessage) -> Outcome:
        creds, client = message.creds, self.client
        if creds is None or client is None:
            return Failed("no_route", "the Business API is not configured")
        try:
            try:
                call = await self._prepare(client, creds, message)
            except ValueError as exc:  # stored content the Cloud API cannot express (bad base64, no media)
                return Failed("invalid_content", f"cannot send this message: {exc}")
            win = await self.pacer.window_acquire(f"cloud:{creds.phone_number_id}", self._window_limit)
            try:
                if message.on_wire is not None:
                    message.on_wire()
                result = await call()
            finally:
                self.pacer.window_release(win)
        except GraphAPIUnavailable as exc:
            if exc.maybe_sent:
                return Unknown(f"no answer from the Graph API: {exc}")
            return Retryable("graph_unavailable", str(exc))
        except GraphAPIError as exc:
            return await self._failure(creds, message, exc)
        canonical = None
        if result.wa_id and canonical_wa_id(result.wa_id) != message.wa_id:
            canonical = result.wa_id
        return Sent(result.wamid, canonical)

    # -- the request --------------------------------------------------------------------------

    async def _prepare(self, client: CloudAPIClient, creds: CloudCredentials, m: OutboundMessage) -> SendCall:
        """The client call for a stored (provider-neutral) message, ready to go."""
        if m.fallback_template is not None:
            return _fallback_template(client, creds, m, m.fallback_template)
        content, kind, to = m.content, m.kind, m.wa_id
        extra: dict[str, Any] = {"biz_opaque_callback_data": m.message_id}
        context = content.get("context") or {}
        if context.get("id"):
            extra["reply_to"] = await self._resolve(m.tenant_id, context["id"], CLOUD)
        partial = functools.partial
        if kind == "text":
            preview = bool(content.get("preview_url"))
            return partial(client.send_text, creds, to, content["text"], preview_url=preview, **extra)
        if kind in MEDIA_KINDS:
            media = await self._media_source(client, creds, kind, content)
            caption, filename = content.get("caption"), content.get("filename") or None
            return partial(
                client.send_media, creds, to, kind, **media, caption=caption, filename=filename, **extra
            )
        if kind == "template":
            parts = (content["name"], content["language"], content.get("components") or None)
            return partial(client.send_template, creds, to, *parts, **extra)
        if kind == "reaction":
            target = await self._resolve(m.tenant_id, content["message_id"], CLOUD)
            return partial(client.send_reaction, creds, to, target, content["emoji"], **extra)
        if kind == "location":
            where = {"name": content.get("name"), "address": content.get("address")}
            return partial(
                client.send_location, creds, to, content["latitude"], content["longitude"], **where, **extra
            )
        part = {k: v for k, v in content.items() if k != "context"}  # the stored object is the Cloud API's
        if kind == "interactive":
            return partial(client.send_interactive, creds, to, part, **extra)
        return partial(client.send_message, creds, to, kind, part, **extra)

    async def _media_source(
        self, client: CloudAPIClient, creds: CloudCredentials, kind: str, content: Mapping[str, Any]
    ) -> dict[str, str | None]:
        """``media_id`` (uploaded now when the message holds the bytes) or ``link``."""
        if content.get("base64"):
            data = base64.b64decode(content["base64"])
            mime = content.get("mime_type") or "application/octet-stream"
            return {"media_id": await client.upload_media(creds, data, mime, content.get("filename") or kind)}
        if content.get("media_id"):
            return {"media_id": content["media_id"]}
        if content.get("link"):
            return {"link": content["link"]}
        raise ValueError(f"{kind} messages need base64, media_id or link")

    # -- the answer ---------------------------------------------------------------------------

    async def _failure(self, creds: CloudCredentials, m: OutboundMessage, exc: GraphAPIError) -> Outcome:
        code = str(exc.code) if exc.code is not None else f"http_{exc.http_status}"
        number = f"cloud:{creds.phone_number_id}"
        if exc.code == 130429 or (exc.code is None and exc.http_status == 429):
            await self.pacer.penalize(number, exc.retry_after_s or 1.0)
        elif exc.code == 131056:
            await self.pacer.penalize_pair(number, m.wa_id, exc.retry_after_s or 6.0)
        elif exc.code in (4, 80007):
            await self.pacer.penalize(number, exc.retry_after_s or 60.0)
        if exc.scope in _BLOCKING_SCOPES:
            self._blocked[m.tenant_id] = (f"token refused ({code})", time.monotonic() + self._block_s)
            log.warning("Business API token refused tenant=%s code=%s", m.tenant_id, code)
        text = exc.details or exc.message
        if exc.retryable:
            return Retryable(code, text, retry_after_s=exc.retry_after_s or 0.0)
        return Failed(code, text)


def _fallback_template(
    client: CloudAPIClient, creds: CloudCredentials, m: OutboundMessage, template: Mapping[str, Any]
) -> SendCall:
    """Outside the 24 h window: the tenant's fallback template, the message's text as its body
    parameter when the template takes one. No reply context."""
    components = None
    if template.get("body_param"):
        text = _plain_text(m.kind, m.content)[:1024] or "-"
        components = [{"type": "body", "parameters": [{"type": "text", "text": text}]}]
    return functools.partial(
        client.send_template,
        creds,
        m.wa_id,
        template["name"],
        template["language"],
        components,
        biz_opaque_callback_data=m.message_id,
    )


def _plain_text(kind: str, content: Mapping[str, Any]) -> str:
    if kind == "text":
        return str(content.get("text") or "")
    return str(content.get("caption") or "")
