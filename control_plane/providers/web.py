"""The Web road: a stored message -> the tenant's bridge ``send`` command -> an ``Outcome``.

The session supervisor (a sibling package) is reached only through :class:`WebSessions`, the one
call this road makes. Its failures are told apart by what every domain error carries
(``control_plane.errors``): the public error ``code`` (the HTTP API's), and for a command the bridge
refused, the bridge's own code (``bridge_code``/``bridge_message``)::

    session_not_ready          Retryable(web_not_ready, not_ready): nothing was sent; the
                               dispatcher may hand the message to the Cloud API
    bridge refused, bad request or not_on_whatsapp / not_supported: Failed(bridge_<code>)
    bridge refused, anything else                                   Retryable(bridge_<code>)
    bridge_unavailable         ambiguous (it may have acted): Unknown; else Retryable
    supervisor_closed          Retryable(shutting_down)

A contact known only by its business-scoped user id (a BSUID: no phone number) cannot be reached on
WhatsApp Web: ``Failed(bsuid_needs_business_api)`` (routing sends such messages to the Cloud API).

Anything else propagates (the dispatcher records it as an unknown outcome).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from control_plane import errors
from control_plane.db.conversations import is_bsuid
from control_plane.providers.base import (
    WEB,
    Failed,
    OutboundMessage,
    Outcome,
    ResolveReference,
    Retryable,
    Sent,
    Unknown,
)

_FINAL_BRIDGE_CODES = frozenset({"not_on_whatsapp", "not_supported"})
BSUID_NEEDS_CLOUD = "bsuid_needs_business_api"
BSUID_NEEDS_CLOUD_TEXT = (
    "the contact is known only by its business-scoped user id (BSUID, no phone number): only the "
    "Business API can reach it"
)


class WebSessions(Protocol):
    """What the Web road uses of the session supervisor."""

    async def send(self, tenant_id: str, args: dict[str, Any]) -> Mapping[str, Any]: ...


class WebProvider:
    """Sends through the tenant's Web session (its bridge)."""

    name = WEB

    def __init__(self, sessions: WebSessions, resolve: ResolveReference) -> None:
        self.sessions = sessions
        self._resolve = resolve

    async def send(self, message: OutboundMessage) -> Outcome:
        if is_bsuid(message.wa_id):
            return Failed(BSUID_NEEDS_CLOUD, BSUID_NEEDS_CLOUD_TEXT)
        args = await self.bridge_args(message)
        if message.on_wire is not None:
            message.on_wire()
        try:
            result = await self.sessions.send(message.tenant_id, args)
        except errors.GatewayError as exc:
            return classify_failure(exc)
        provider_message_id = str(result.get("id") or "")
        if not provider_message_id:
            return Unknown("the bridge answered without a message id")
        return Sent(provider_message_id)

    async def bridge_args(self, message: OutboundMessage) -> dict[str, Any]:
        """The bridge's ``send`` arguments for a stored (provider-neutral) message."""
        content = message.content
        kind = message.kind
        args: dict[str, Any] = {"to": message.wa_id}
        if kind == "text":
            args.update(type="text", text=content["text"])
        elif kind == "location":
            args.update(
                type="location",
                location={
                    "latitude": content["latitude"],
                    "longitude": content["longitude"],
                    "description": content.get("name") or content.get("address"),
                },
            )
        else:
            args.update(type="media", media=_bridge_media(content))
            if content.get("caption") is not None:
                args["caption"] = content["caption"]
        context = content.get("context") or {}
        if context.get("id"):
            args["reply_to"] = await self._resolve(message.tenant_id, context["id"], WEB)
        return args


def _bridge_media(content: Mapping[str, Any]) -> dict[str, Any]:
    media: dict[str, Any] = {}
    if content.get("base64"):
        media["base64"] = content["base64"]
    else:
        media["url"] = content.get("link")
    if content.get("mime_type"):
        media["mimetype"] = content["mime_type"]
    if content.get("filename"):
        media["filename"] = content["filename"]
    return media


def classify_failure(exc: errors.GatewayError) -> Outcome:
    """The outcome of a supervisor error raised by ``send`` (see the module docstring)."""
    if exc.code == "session_not_ready":
        return Retryable("web_not_ready", str(exc), not_ready=True)
    bridge_code = getattr(exc, "bridge_code", None)
    if bridge_code is not None:
        code, text = f"bridge_{bridge_code}", str(getattr(exc, "bridge_message", ""))
        if isinstance(exc, errors.InvalidInput) or bridge_code in _FINAL_BRIDGE_CODES:
            return Failed(code, text)
        return Retryable(code, text)
    if exc.code == "bridge_unavailable":
        if getattr(exc, "ambiguous", True):
            return Unknown(f"bridge gave no answer: {exc}")
        return Retryable("bridge_unavailable", str(exc))
    if exc.code == "supervisor_closed":
        return Retryable("shutting_down", str(exc))
    raise exc
