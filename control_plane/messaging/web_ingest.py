"""Web-session traffic into the same tables and events as the Cloud API's.

The supervisor calls ``listener(tenant_id, event_name, data)`` for each bridge event of
``protocol.FORWARDED_EVENTS`` (bridge/PROTOCOL.md). Messages become inbound rows shaped like the
Cloud API's (provider-neutral ``content``: ``{"text": ...}``, docs/EVENTS.md), in the conversation of
the sender's wa_id (a phone number's digits; groups and @lid: below); acks become status facts on
the same ladder as Meta's statuses:

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

Groups: a group chat is ONE conversation, ``kind: "group"``, whose wa_id is the group's id as
WhatsApp gives it (``120363...@g.us``; older groups ``<creator>-<seconds>@g.us``: its digits alone
would lose the hyphen, and could not be sent to again). Each of its messages names the member who
wrote it in ``author`` (a wa_id), never a made-up phone number; its ``contact_name`` stays empty (a
member's push name is no name for the group). Senders WhatsApp Web knows only by an ``@lid`` id
arrive resolved to their phone number when WhatsApp Web knows it (the bridge does that, PROTOCOL.md),
else they keep ``<n>@lid`` as their wa_id (``db.conversations.canonical_wa_id``): their digits are no
phone number. ``status@broadcast`` posts are no conversation: counted (``status_posts``), logged once
per tenant, dropped.

Notices: ``group_join`` / ``group_leave`` / ``call`` / ``vote_update`` become ``group.join`` /
``group.leave`` / ``call.incoming`` / ``poll.vote`` (``events.py``, docs/EVENTS.md), published once
everything the bridge reported before them is stored (their conversation, a vote's poll message:
looked up then), so they follow it in the event log. Reactions, edits and revokes are changes to
stored messages (``message_reaction`` / ``message_edit`` / ``message_revoke``: their own parse).

Changes to a stored message (``change_item``): the bridge events ``message_reaction``,
``message_edit`` and ``message_revoke`` update the message they name (``db/message_changes.py``)
and are published as ``message.reaction`` / ``message.edited`` / ``message.deleted``. Their
``data`` (ids as whatsapp-web.js serializes them; ``actor`` as a chat id or digits):

    field         meaning (where the bridge takes it from in whatsapp-web.js)
    id            the change's OWN id, stable across re-sends (a repeated id changes nothing):
                    message_reaction: reaction.id._serialized
                    message_edit: message.latestEditMsgKey._serialized, else
                                  "<target>_edit_<timestamp_ms>"
                    message_revoke (from message_revoke_everyone): the revoking message's
                                  id._serialized when it differs from target, else "<target>_revoke"
    target        the id of the message changed: reaction.msgId._serialized; the edited message's
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

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane import events as event_types
from control_plane.bridge import protocol
from control_plane.db import Database
from control_plane.db import messages as messages_db
from control_plane.db.conversations import CONTACT_ID_LEN, canonical_wa_id, clip
from control_plane.messaging.inbound import InboundService
from control_plane.realtime.unit import EventLog, store_then_publish
from control_plane.text_repair import WARNINGS_KEY

log = logging.getLogger(__name__)

PROVIDER = "web"
STATUS_CHAT = "status@broadcast"
NOTICE_ATTEMPTS = 6  # publishing a notice: tries before it is given up (logged), ~6 s apart at most
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
    """A WhatsApp id -> its wa_id: ``16505551234@c.us`` -> ``16505551234`` (one conversation per
    contact); a group ``120363...@g.us`` and an unresolved ``<n>@lid`` are kept whole;
    ``status@broadcast`` and other ids -> ``""`` (no conversation)."""
    return canonical_wa_id(str(chat_id or ""))


def is_group(wa_id: str) -> bool:
    return wa_id.endswith("@g.us")


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
    if raw_type == "poll_creation":
        poll: dict[str, Any] = data["poll"] if isinstance(data.get("poll"), dict) else {}
        options = poll["options"] if isinstance(poll.get("options"), list) else []
        return "poll", {"name": poll.get("name") or body, "options": [str(o) for o in options]}
    if raw_type == "location":
        loc: dict[str, Any] = data["location"] if isinstance(data.get("location"), dict) else {}
        content = {"latitude": loc.get("latitude"), "longitude": loc.get("longitude")}
        if loc.get("description"):
            content["name"] = loc["description"]
        return "location", content
    return clip(raw_type, 32), {"raw": {"type": raw_type, "body": body}}  # content.raw: the whole type


def inbound_item(data: dict[str, Any]) -> dict[str, Any] | None:
    """A bridge ``message`` event -> a ``record_inbound_messages`` item (None: not for us).
    A ``from_me`` one (typed on the phone) gets ``from_me: True`` and ``wa_id`` = the recipient.
    In a group, ``wa_id`` is the group and ``author`` the member who wrote (ours: our number)."""
    from_me = bool(data.get("from_me"))
    message_id = data.get("id")
    if from_me:
        wa_id = chat_wa_id(data.get("to") or data.get("chat_id"))
    else:
        wa_id = chat_wa_id(data.get("from") or data.get("chat_id"))
    if not _is_id(message_id) or not wa_id or len(wa_id) > CONTACT_ID_LEN:
        return None
    kind, content = _content(data)
    if WARNINGS_KEY in data:  # text that was no Unicode, repaired (control_plane/text_repair.py)
        content["warnings"] = data.pop(WARNINGS_KEY)
    if data.get("quoted_id"):
        content["context"] = {"id": str(data["quoted_id"])}
    group = is_group(wa_id)
    item: dict[str, Any] = {
        "provider": PROVIDER,
        "provider_message_id": message_id,
        "wa_id": wa_id,
        "type": kind,
        "content": content,
        "provider_timestamp": _ts(data.get("timestamp")),
    }
    if from_me:
        sender = chat_wa_id(data.get("from")) or None
        item.update({"from_me": True, "from": sender, "author": sender if group else None})
    else:
        name = data.get("notify_name") if isinstance(data.get("notify_name"), str) else None
        item["contact_name"] = None if group else name
        item["author"] = (chat_wa_id(data.get("author")) or None) if group else None
        item["to"] = chat_wa_id(data.get("to")) or None
    if len(item["author"] or "") > CONTACT_ID_LEN:
        return None  # ids are stored whole or refused, never cut
    return item


def _is_id(value: Any) -> bool:
    """A Web message id we store: stored whole up to ``PROVIDER_ID_LEN`` characters, else refused."""
    return isinstance(value, str) and 0 < len(value) <= messages_db.PROVIDER_ID_LEN


def is_status_post(data: dict[str, Any]) -> bool:
    return STATUS_CHAT in (data.get("chat_id"), data.get("from"), data.get("to"))


def status_item(data: dict[str, Any], ts_ms: int | None = None) -> dict[str, Any] | None:
    """A bridge ``message_ack`` event -> an ``apply_status_updates`` item (None: ignored)."""
    message_id = data.get("id")
    ack = data.get("ack")
    status = ACK_STATUS.get(ack) if isinstance(ack, int) else None
    recipient = chat_wa_id(data.get("to")) or None
    if not _is_id(message_id) or status is None or len(recipient or "") > CONTACT_ID_LEN:
        return None
    item = {
        "provider": PROVIDER,
        "provider_message_id": message_id,
        "status": status,
        "occurred_at": _ts(ts_ms / 1000) if ts_ms else None,
        "recipient_id": recipient,
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
    change_id, target = data.get("id"), data.get("target")
    if kind is None or not _is_id(change_id) or not _is_id(target):
        return None
    actor = data.get("actor")
    if isinstance(actor, str) and len(actor) > CONTACT_ID_LEN:
        return None
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


# ------------------------------------------------------------------------------------- notices


def _ms(value: Any) -> dt.datetime | None:
    """Milliseconds since the epoch -> naive UTC."""
    return _ts(value / 1000) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Notice:
    """A bridge notice, parsed: the event to publish, built once its ids are looked up."""

    type: str
    wa_id: str  # the conversation it concerns
    target: str | None  # a vote's poll (its provider message id)
    build: Callable[[int | None, str | None], dict[str, Any]]  # (conversation id, message id) -> data


def _group_notice(name: str, data: dict[str, Any]) -> Notice | None:
    group = chat_wa_id(data.get("chat_id"))
    if not is_group(group):
        return None
    raw = data.get("members")
    members = [m for m in (chat_wa_id(x) for x in (raw if isinstance(raw, list) else [])) if m]
    by = chat_wa_id(data.get("by")) or None
    join = name == protocol.EVENT_GROUP_JOIN
    reason = _str(data.get("type")) or ("add" if join else "remove")
    event_id, at = _str(data.get("id")), _ms(data.get("timestamp_ms"))
    return Notice(
        event_types.GROUP_JOIN if join else event_types.GROUP_LEAVE,
        group,
        None,
        lambda cid, _mid: event_types.group_event(cid, group, reason, members, by, event_id, at),
    )


def _call_notice(name: str, data: dict[str, Any]) -> Notice | None:
    caller = chat_wa_id(data.get("from"))
    if not caller or data.get("from_me"):  # a call made from the phone is no incoming call
        return None
    call_id, at = _str(data.get("id")), _ms(data.get("timestamp_ms"))
    video, group = bool(data.get("video")), bool(data.get("group"))
    return Notice(
        event_types.CALL_INCOMING,
        caller,
        None,
        lambda cid, _mid: event_types.call_event(cid, caller, call_id, video, group, at),
    )


def _vote_notice(name: str, data: dict[str, Any]) -> Notice | None:
    target, voter = _str(data.get("target")), chat_wa_id(data.get("actor"))
    raw = data.get("options")
    if target is None or not voter or not isinstance(raw, list):
        return None
    options = [
        {
            "name": _str(o.get("name")),
            "index": o.get("local_id") if isinstance(o.get("local_id"), int) else None,
        }
        for o in raw
        if isinstance(o, dict)
    ]
    at = _ms(data.get("timestamp_ms"))
    return Notice(
        event_types.POLL_VOTE,
        chat_wa_id(data.get("chat_id")),
        target,
        lambda cid, mid: event_types.vote_event(cid, mid, target, voter, options, at),
    )


_NOTICES: dict[str, Callable[[str, dict[str, Any]], Notice | None]] = {
    protocol.EVENT_GROUP_JOIN: _group_notice,
    protocol.EVENT_GROUP_LEAVE: _group_notice,
    protocol.EVENT_CALL: _call_notice,
    protocol.EVENT_VOTE_UPDATE: _vote_notice,
}


def parse_notice(name: str, data: dict[str, Any]) -> Notice | None:
    """A bridge group_join / group_leave / call / vote_update event -> its Notice (None: nothing to say)."""
    parse = _NOTICES.get(name)
    return parse(name, data) if parse is not None else None


async def _notice_ids(conn: Any, tenant_id: str, notice: Notice) -> tuple[int | None, str | None]:
    """(conversation id, message id) of what the notice concerns, when the gateway has them."""
    if notice.target is not None:
        row = await messages_db.get_message_by_provider_id(conn, tenant_id, PROVIDER, notice.target)
        if row is not None:
            return row["conversation_id"], row["id"]
    if not notice.wa_id:
        return None, None
    conv = await messages_db.get_conversation_by_wa_id(conn, tenant_id, notice.wa_id)
    return (conv["id"] if conv else None), None


class WebIngest:
    """The supervisor's message listener: bridge events -> the inbound service, in arrival order.
    Notices are published through ``events()`` (the publisher, looked up late) in ``db``."""

    def __init__(
        self,
        inbound: InboundService,
        db: Database | None = None,
        events: Callable[[], EventLog | None] | None = None,
    ) -> None:
        self._inbound = inbound
        self._db = db
        self._events = events or (lambda: None)
        self.status_posts = 0  # status@broadcast posts dropped
        self._status_logged: set[str] = set()

    @property
    def stored_phone(self) -> int:
        return self._inbound.stats.phone_stored

    async def __call__(self, tenant_id: str, event_name: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        if event_name == protocol.EVENT_MESSAGE:
            self._message(tenant_id, data)
        elif event_name == protocol.EVENT_MESSAGE_ACK:
            status = status_item(data)
            if status is not None:
                self._inbound.put(tenant_id, statuses=[status])
        elif event_name in _NOTICES:
            notice = parse_notice(event_name, data)
            if notice is not None:
                await self._publish_notice(tenant_id, notice)
        elif event_name in CHANGE_EVENTS:
            change = change_item(event_name, data)
            if change is not None:
                self._inbound.put(tenant_id, changes=[change])
        else:
            log.debug("web ingest: ignoring %s tenant=%s", event_name, tenant_id)

    def _message(self, tenant_id: str, data: dict[str, Any]) -> None:
        if is_status_post(data):
            self.status_posts += 1
            if tenant_id not in self._status_logged:
                self._status_logged.add(tenant_id)
                log.info("status@broadcast posts are no conversation: dropping them tenant=%s", tenant_id)
            return
        item = inbound_item(data)
        if item is None:
            return
        if item.get("from_me"):
            self._inbound.put(tenant_id, phone=[item])
        else:
            self._inbound.put(tenant_id, messages=[item])

    async def _publish_notice(self, tenant_id: str, notice: Notice) -> None:
        """Once what came before is stored: look the notice's ids up and publish it, in one
        transaction; retried while the database is away (later events wait: order is kept)."""
        events = self._events()
        if self._db is None or events is None:
            log.warning("web ingest: no event log, %s dropped tenant=%s", notice.type, tenant_id)
            return
        for attempt in range(1, NOTICE_ATTEMPTS + 1):
            try:
                await self._inbound.flush()
                async with store_then_publish(self._db.begin(), events) as unit:
                    conversation_id, message_id = await _notice_ids(unit.conn, tenant_id, notice)
                    unit.add(tenant_id, notice.type, notice.build(conversation_id, message_id))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cannot publish %s (%s), %d attempts left tenant=%s",
                    notice.type,
                    exc,
                    NOTICE_ATTEMPTS - attempt,
                    tenant_id,
                )
                if attempt < NOTICE_ATTEMPTS:
                    await asyncio.sleep(min(0.2 * 2**attempt, 6.0))
        log.error("%s given up tenant=%s", notice.type, tenant_id)

    async def flush(self, within_s: float = 10.0) -> bool:
        """Waits until the events received so far are stored (tests, shutdown)."""
        return await self._inbound.flush(within_s)
