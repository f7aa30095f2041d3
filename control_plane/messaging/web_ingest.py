"""Web-session traffic into the same tables and events as the Cloud API's.

The supervisor calls ``listener(tenant_id, event_name, data)`` for each bridge ``message`` and
``message_ack`` event (bridge/PROTOCOL.md). Messages become inbound rows shaped like the Cloud
API's (provider-neutral ``content``: ``{"text": ...}``, docs/EVENTS.md), in the conversation of the
sender's digits-only wa_id; acks become status facts on the same ladder as Meta's statuses:

    ack -1 -> failed, 1 -> sent, 2 -> delivered, 3 -> read, 4 -> played   (0 = pending: ignored)

Everything goes to the inbound service (``messaging/inbound.py``), in the order the bridge reported
it, and is published as ``message.received`` / ``message.status`` / ``message.failed``.

Messages typed on the phone itself (``from_me``: the bridge reports only those, never the echo of
a send of ours, and always before their acks) become outbound rows (``status: sent``, provider
``web``, no outbox row) in the contact's conversation, published as ``message.sent`` with
``origin: "phone"``, idempotently on (tenant, provider message id): a message already stored under
that id (a send of ours, a repeated event) is skipped. Their acks come after them (one writer, in
order), so they find the message stored.

Timestamps keep the bridge's precision (the scripted driver's carry milliseconds).

Changes to a stored message (``change_item``): the bridge events ``message_reaction``,
``message_edit`` and ``message_revoke`` update the message they name (``db/message_changes.py``)
and are published as ``message.reaction`` / ``message.edited`` / ``message.deleted``. Their
``data`` (ids as whatsapp-web.js serializes them; ``actor`` as a chat id or digits):

    field         meaning (where the bridge takes it from in whatsapp-web.js)
    id            the change's OWN id, stable across re-sends (a repeated id changes nothing):
                    message_reaction: reaction.id._serialized
                    message_edit: message.latestEditMsgKey._serialized, else
                                  "<target_id>_edit_<timestamp_ms>"
                    message_revoke (from message_revoke_everyone): the revoking message's
                                  id._serialized when it differs from target_id, else "<target_id>_revoke"
    target_id     the id of the message changed: reaction.msgId._serialized; the edited message's
                  id._serialized; the revoked one's (message.protocolMessageKey, else message.id)
    actor         who: reaction.senderId; message.author || message.from (the session's own
                  number for a change made on the phone)
    timestamp_ms  when, ms since the epoch: reaction.timestamp * 1000;
                  message.latestEditSenderTimestampMs; the revoke's timestamp * 1000.
                  Absent: when it is stored
    emoji         message_reaction only: reaction.reaction; "" when the reaction was removed
    body          message_edit only: newBody (a text message's text, else its caption)

A change that arrives before its message (or names one from before the gateway) is kept and
applied when the message is stored.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from control_plane.bridge import protocol
from control_plane.db.conversations import canonical_wa_id
from control_plane.messaging.inbound import InboundService

log = logging.getLogger(__name__)

PROVIDER = "web"
# Bridge events that change a stored message -> the change's kind (see the module docstring).
CHANGE_EVENTS = {"message_reaction": "reaction", "message_edit": "edit", "message_revoke": "revoke"}
ACK_STATUS = {-1: "failed", 1: "sent", 2: "delivered", 3: "read", 4: "played"}
_MEDIA_KINDS = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "ptt": "audio",
    "document": "document",
    "sticker": "sticker",
}


def chat_wa_id(chat_id: Any) -> str:
    """``16505551234@c.us`` -> ``16505551234`` (digits only; one conversation per contact)."""
    user = str(chat_id or "").split("@", 1)[0]
    return canonical_wa_id(user)


_EPOCH = dt.datetime(1970, 1, 1)


def _ts(value: Any) -> dt.datetime | None:
    """Unix seconds (a fraction carries milliseconds) -> naive UTC, to the millisecond."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not 0 <= seconds < 32503680000:
        return None
    return _EPOCH + dt.timedelta(milliseconds=round(seconds * 1000))


def _content(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A bridge message's (type, provider-neutral content)."""
    raw_type = str(data.get("type") or "chat")
    body = data.get("body") if isinstance(data.get("body"), str) else ""
    if raw_type in ("chat", "text"):
        return "text", {"text": body}
    if raw_type in _MEDIA_KINDS:
        media: dict[str, Any] = data["media"] if isinstance(data.get("media"), dict) else {}
        content: dict[str, Any] = {"mime_type": media.get("mimetype")}
        if media.get("filename"):
            content["filename"] = media["filename"]
        if body:
            content["caption"] = body
        if raw_type == "ptt":
            content["voice"] = True
        if media.get("url"):
            content["url"] = media["url"]
        # Inline media bytes are not stored in the message row (they can be megabytes).
        return _MEDIA_KINDS[raw_type], content
    if raw_type == "location":
        loc: dict[str, Any] = data["location"] if isinstance(data.get("location"), dict) else {}
        content = {"latitude": loc.get("latitude"), "longitude": loc.get("longitude")}
        if loc.get("description"):
            content["name"] = loc["description"]
        return "location", content
    return raw_type[:32], {"raw": {"type": raw_type, "body": body}}


def inbound_item(data: dict[str, Any]) -> dict[str, Any] | None:
    """A bridge ``message`` event -> a ``record_inbound_messages`` item (None: not for us).
    A ``from_me`` one (typed on the phone) gets ``from_me: True`` and ``wa_id`` = the recipient."""
    from_me = bool(data.get("from_me"))
    message_id = data.get("id")
    if from_me:
        wa_id = chat_wa_id(data.get("to") or data.get("chat_id"))
    else:
        wa_id = chat_wa_id(data.get("from") or data.get("chat_id"))
    if not isinstance(message_id, str) or not message_id or not wa_id:
        return None
    kind, content = _content(data)
    if data.get("quoted_id"):
        content["context"] = {"id": str(data["quoted_id"])}
    if from_me:
        return {
            "provider": PROVIDER,
            "provider_message_id": message_id,
            "wa_id": wa_id,
            "type": kind,
            "content": content,
            "provider_timestamp": _ts(data.get("timestamp")),
            "from_me": True,
            "from": chat_wa_id(data.get("from")) or None,
        }
    return {
        "provider": PROVIDER,
        "provider_message_id": message_id,
        "wa_id": wa_id,
        "type": kind,
        "content": content,
        "provider_timestamp": _ts(data.get("timestamp")),
        "contact_name": data.get("notify_name") if isinstance(data.get("notify_name"), str) else None,
        "to": chat_wa_id(data.get("to")) or None,
    }


def status_item(data: dict[str, Any], ts_ms: int | None = None) -> dict[str, Any] | None:
    """A bridge ``message_ack`` event -> an ``apply_status_updates`` item (None: ignored)."""
    message_id = data.get("id")
    ack = data.get("ack")
    status = ACK_STATUS.get(ack) if isinstance(ack, int) else None
    if not isinstance(message_id, str) or not message_id or status is None:
        return None
    item = {
        "provider": PROVIDER,
        "provider_message_id": message_id,
        "status": status,
        "occurred_at": _ts(ts_ms / 1000) if ts_ms else None,
        "recipient_id": chat_wa_id(data.get("to")) or None,
        "raw": data,
    }
    if status == "failed":
        item["error_code"] = "web_ack_error"
        item["error_message"] = "WhatsApp Web reported the message as failed (ack -1)"
    return item


def change_item(event_name: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """A bridge ``message_reaction`` / ``message_edit`` / ``message_revoke`` event -> a
    ``message_changes.record_changes`` item (None: not one, or no id or target)."""
    kind = CHANGE_EVENTS.get(event_name)
    change_id, target = data.get("id"), data.get("target_id")
    if kind is None or not isinstance(change_id, str) or not change_id:
        return None
    if not isinstance(target, str) or not target:
        return None
    actor = data.get("actor")
    ts_ms = data.get("timestamp_ms")
    item: dict[str, Any] = {
        "provider": PROVIDER,
        "provider_message_id": change_id,
        "target_provider_message_id": target,
        "kind": kind,
        "actor": (chat_wa_id(actor) or str(actor)) if isinstance(actor, str) and actor else None,
        "occurred_at": _ts(ts_ms / 1000) if isinstance(ts_ms, (int, float)) and ts_ms > 0 else None,
    }
    if kind == "reaction":
        item["emoji"] = data["emoji"] if isinstance(data.get("emoji"), str) else ""
    elif kind == "edit":
        item["text"] = data["body"] if isinstance(data.get("body"), str) else ""
    return item


class WebIngest:
    """The supervisor's message listener: bridge events -> the inbound service, in arrival order."""

    def __init__(self, inbound: InboundService) -> None:
        self._inbound = inbound

    @property
    def stored_phone(self) -> int:
        return self._inbound.stats.phone_stored

    async def __call__(self, tenant_id: str, event_name: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        if event_name == protocol.EVENT_MESSAGE:
            item = inbound_item(data)
            if item is None:
                return
            if item.get("from_me"):
                self._inbound.put(tenant_id, phone=[item])
            else:
                self._inbound.put(tenant_id, messages=[item])
        elif event_name == protocol.EVENT_MESSAGE_ACK:
            status = status_item(data)
            if status is not None:
                self._inbound.put(tenant_id, statuses=[status])
        elif event_name in CHANGE_EVENTS:
            change = change_item(event_name, data)
            if change is not None:
                self._inbound.put(tenant_id, changes=[change])
        else:
            log.debug("web ingest: ignoring %s tenant=%s", event_name, tenant_id)

    async def flush(self, within_s: float = 10.0) -> bool:
        """Waits until the events received so far are stored (tests, shutdown)."""
        return await self._inbound.flush(within_s)
