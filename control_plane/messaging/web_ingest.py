"""Web-session traffic into the same tables and events as the Cloud API's.

The supervisor calls ``listener(tenant_id, event_name, data)`` for each bridge ``message`` and
``message_ack`` event (bridge/PROTOCOL.md). Messages become inbound rows shaped like the Cloud API's
(provider-neutral ``content``: ``{"text": ...}``, docs/EVENTS.md), in the conversation of the sender's digits-only wa_id;
acks become status facts on the same ladder as Meta's statuses:

    ack -1 -> failed, 1 -> sent, 2 -> delivered, 3 -> read, 4 -> played   (0 = pending: ignored)

They are stored by the dispatcher's recorder (one writer, so an ack can never race the record of
its own send), then published as ``message.received`` / ``message.status`` / ``message.failed``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from control_plane.bridge import protocol
from control_plane.db.messages import canonical_wa_id

log = logging.getLogger(__name__)

PROVIDER = "web"
ACK_STATUS = {-1: "failed", 1: "sent", 2: "delivered", 3: "read", 4: "played"}
_MEDIA_KINDS = {"image": "image", "video": "video", "audio": "audio", "ptt": "audio", "document": "document",
                "sticker": "sticker"}


def chat_wa_id(chat_id: Any) -> str:
    """``16505551234@c.us`` -> ``16505551234`` (digits only; one conversation per contact)."""
    user = str(chat_id or "").split("@", 1)[0]
    return canonical_wa_id(user)


def _ts(value: Any) -> dt.datetime | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not 0 <= seconds < 32503680000:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def inbound_item(data: dict[str, Any]) -> dict[str, Any] | None:
    """A bridge ``message`` event -> a ``record_inbound_messages`` item (None: not for us)."""
    if data.get("from_me"):
        return None  # typed on the phone itself; not an inbound message (see docs/MESSAGING.md)
    message_id = data.get("id")
    wa_id = chat_wa_id(data.get("from") or data.get("chat_id"))
    if not isinstance(message_id, str) or not message_id or not wa_id:
        return None
    raw_type = str(data.get("type") or "chat")
    body = data.get("body") if isinstance(data.get("body"), str) else ""
    content: dict[str, Any]
    if raw_type in ("chat", "text"):
        kind, content = "text", {"text": body}
    elif raw_type in _MEDIA_KINDS:
        kind = _MEDIA_KINDS[raw_type]
        media = data.get("media") if isinstance(data.get("media"), dict) else {}
        content = {"mime_type": media.get("mimetype")}
        if media.get("filename"):
            content["filename"] = media["filename"]
        if body:
            content["caption"] = body
        if raw_type == "ptt":
            content["voice"] = True
        if media.get("url"):
            content["url"] = media["url"]
        # Inline media bytes are not stored in the message row (they can be megabytes).
    elif raw_type == "location":
        loc = data.get("location") if isinstance(data.get("location"), dict) else {}
        content = {"latitude": loc.get("latitude"), "longitude": loc.get("longitude")}
        if loc.get("description"):
            content["name"] = loc["description"]
        kind = "location"
    else:
        kind, content = raw_type[:32], {"raw": {"type": raw_type, "body": body}}
    if data.get("quoted_id"):
        content["context"] = {"id": str(data["quoted_id"])}
    return {"provider": PROVIDER, "provider_message_id": message_id, "wa_id": wa_id, "type": kind,
            "content": content, "provider_timestamp": _ts(data.get("timestamp")),
            "contact_name": data.get("notify_name") if isinstance(data.get("notify_name"), str) else None,
            "to": chat_wa_id(data.get("to")) or None}


def status_item(data: dict[str, Any], ts_ms: int | None = None) -> dict[str, Any] | None:
    """A bridge ``message_ack`` event -> an ``apply_status_updates`` item (None: ignored)."""
    message_id = data.get("id")
    ack = data.get("ack")
    status = ACK_STATUS.get(ack) if isinstance(ack, int) else None
    if not isinstance(message_id, str) or not message_id or status is None:
        return None
    item = {"provider": PROVIDER, "provider_message_id": message_id, "status": status,
            "occurred_at": _ts(ts_ms / 1000) if ts_ms else None,
            "recipient_id": chat_wa_id(data.get("to")) or None, "raw": data}
    if status == "failed":
        item["error_code"] = "web_ack_error"
        item["error_message"] = "WhatsApp Web reported the message as failed (ack -1)"
    return item


class WebIngest:
    """The supervisor's message listener; hands items to the dispatcher's recorder."""

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder

    async def __call__(self, tenant_id: str, event_name: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        if event_name == protocol.EVENT_MESSAGE:
            item = inbound_item(data)
            if item is not None:
                self._recorder.put_ingest(tenant_id, messages=[item])
        elif event_name == protocol.EVENT_MESSAGE_ACK:
            item = status_item(data)
            if item is not None:
                self._recorder.put_ingest(tenant_id, statuses=[item])
        else:
            log.debug("web ingest: ignoring %s tenant=%s", event_name, tenant_id)
