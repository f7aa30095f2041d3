"""Web-session traffic into the same tables and events as the Cloud API's.

The supervisor calls ``listener(tenant_id, event_name, data)`` for each bridge ``message`` and
``message_ack`` event (bridge/PROTOCOL.md). Messages become inbound rows shaped like the Cloud API's
(provider-neutral ``content``: ``{"text": ...}``, docs/EVENTS.md), in the conversation of the sender's digits-only wa_id;
acks become status facts on the same ladder as Meta's statuses:

    ack -1 -> failed, 1 -> sent, 2 -> delivered, 3 -> read, 4 -> played   (0 = pending: ignored)

They are stored by the dispatcher's recorder (one writer, so an ack can never race the record of
its own send), then published as ``message.received`` / ``message.status`` / ``message.failed``.

Messages typed on the phone itself (``from_me``: the bridge reports only those, never the echo of
a send of ours, and always before their acks) become outbound rows (``status: sent``, provider
``web``, no outbox row) in the contact's conversation, published as ``message.sent`` with
``origin: "phone"``. They are written here, in batches, idempotently on (tenant, provider message
id): a message already stored under that id (a send of ours, a repeated event) is skipped. Acks for
a phone message still being written wait for it, then go to the recorder like any other ack.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from typing import Any

import sqlalchemy as sa

from control_plane import events as event_types
from control_plane.bridge import protocol
from control_plane.db import messages as messages_db
from control_plane.db.engine import utcnow
from control_plane.db.messages import canonical_wa_id
from control_plane.webhooks.ingest import iso

log = logging.getLogger(__name__)

PROVIDER = "web"
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


def _ts(value: Any) -> dt.datetime | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not 0 <= seconds < 32503680000:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


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


PHONE_ROUTE_REASON = "typed on the phone"


def phone_sent_event(row: dict[str, Any]) -> dict[str, Any]:
    """``message.sent`` data for a message typed on the phone (docs/EVENTS.md): the outbound shape
    plus ``origin: "phone"``, ``from``, ``type`` and ``content`` (the CRM has not seen it before)."""
    at = row.get("provider_timestamp")
    return {
        "message_id": row["id"],
        "conversation_id": row["conversation_id"],
        "provider": PROVIDER,
        "direction": "outbound",
        "origin": "phone",
        "from": row.get("from"),
        "to": row["wa_id"],
        "type": row["type"],
        "content": row["content"],
        "status": "sent",
        "provider_message_id": row["provider_message_id"],
        "timestamp": iso(at),
        "error": None,
        "route_reason": PHONE_ROUTE_REASON,
    }


async def record_phone_messages(
    conn: Any, tenant_id: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Store messages typed on the phone as outbound rows, once per (tenant, provider message id);
    returns the rows stored now (content decoded, ``wa_id`` and ``from`` added), oldest first.
    Acks that were stored before their message (``message_id`` NULL) are applied."""
    m, c = messages_db.messages.c, messages_db.conversations.c
    fresh: dict[str, dict[str, Any]] = {}
    for item in items:
        fresh.setdefault(item["provider_message_id"][: messages_db.PROVIDER_ID_LEN], item)
    if not fresh:
        return []
    known = await conn.execute(
        sa.select(m.provider_message_id).where(
            m.tenant_id == tenant_id, m.provider == PROVIDER, m.provider_message_id.in_(list(fresh))
        )
    )
    for (pmid,) in known:
        fresh.pop(pmid, None)  # a send of ours, or the same message reported again
    now = utcnow()
    stored = []
    for pmid, item in sorted(fresh.items(), key=lambda kv: (kv[1]["provider_timestamp"] or now, kv[0])):
        conv = await messages_db.get_or_create_conversation(conn, tenant_id, item["wa_id"], provider=PROVIDER)
        at = item["provider_timestamp"] or now
        row = {
            "id": messages_db.new_message_id(),
            "tenant_id": tenant_id,
            "conversation_id": conv["id"],
            "direction": "outbound",
            "provider": PROVIDER,
            "provider_message_id": pmid,
            "type": str(item["type"])[:32],
            "content": messages_db.dump_json(item["content"]),
            "status": "sent",
            "created_at": now,
            "updated_at": now,
            "sent_at": at,
            "provider_timestamp": at,
        }
        insert = messages_db.messages.insert()
        insert = insert.prefix_with("OR IGNORE" if conn.dialect.name == "sqlite" else "IGNORE")
        if (await conn.execute(insert.values(**row))).rowcount == 0:
            continue  # stored meanwhile by another writer
        newer = sa.or_(c.last_message_at.is_(None), c.last_message_at <= at)
        await conn.execute(
            messages_db.conversations.update()
            .where(c.tenant_id == tenant_id, c.id == conv["id"], newer)
            .values(last_message_at=at, last_message_id=row["id"], updated_at=now)
        )
        after = await messages_db.apply_recorded_statuses(conn, tenant_id, row["id"])
        if after is not None:
            row.update(status=after["status"], updated_at=after["updated_at"])
        row["content"] = item["content"]
        row["wa_id"] = conv["wa_id"]
        row["from"] = item.get("from")
        stored.append(row)
    return stored


class WebIngest:
    """The supervisor's message listener. Inbound messages and acks go to the dispatcher's recorder;
    phone-typed messages are written here (``record_phone_messages``) by one task per burst."""

    MAX_BATCH = 200
    ATTEMPTS = 5

    def __init__(self, recorder: Any, *, db: Any, events: Any = None) -> None:
        self._recorder = recorder
        self._db = db
        self._events = events
        self._phone: deque[tuple[str, dict[str, Any]]] = deque()
        self._held: dict[tuple[str, str], list[dict[str, Any]]] = {}  # acks waiting for their message
        self._task: asyncio.Task | None = None
        self.stored_phone = 0

    async def __call__(self, tenant_id: str, event_name: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        if event_name == protocol.EVENT_MESSAGE:
            item = inbound_item(data)
            if item is None:
                return
            if item.get("from_me"):
                self._held.setdefault((tenant_id, item["provider_message_id"]), [])
                self._phone.append((tenant_id, item))
                if self._task is None or self._task.done():
                    self._task = asyncio.create_task(self._write_phone(), name="web-ingest-phone")
            else:
                self._recorder.put_ingest(tenant_id, messages=[item])
        elif event_name == protocol.EVENT_MESSAGE_ACK:
            item = status_item(data)
            if item is None:
                return
            held = self._held.get((tenant_id, item["provider_message_id"]))
            if held is not None:
                held.append(item)  # its message is being written: after it
            else:
                self._recorder.put_ingest(tenant_id, statuses=[item])
        else:
            log.debug("web ingest: ignoring %s tenant=%s", event_name, tenant_id)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Waits until the phone messages received so far are written (tests, shutdown)."""
        task = self._task
        if task is None or task.done():
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)

    async def _write_phone(self) -> None:
        while self._phone:
            batch = [self._phone.popleft() for _ in range(min(len(self._phone), self.MAX_BATCH))]
            try:
                await self._store_phone(batch)
            except Exception:
                log.exception("web ingest: cannot store %d phone message(s)", len(batch))
            for tenant_id, item in batch:
                acks = self._held.pop((tenant_id, item["provider_message_id"]), None)
                if acks:
                    self._recorder.put_ingest(tenant_id, statuses=acks)

    async def _store_phone(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        db, events = self._db, self._events
        per_tenant: dict[str, list[dict[str, Any]]] = {}
        for tenant_id, item in batch:
            per_tenant.setdefault(tenant_id, []).append(item)
        for attempt in range(self.ATTEMPTS):
            try:
                async with db.begin() as conn:
                    new_events = []
                    for tenant_id in sorted(per_tenant):
                        rows = await record_phone_messages(conn, tenant_id, per_tenant[tenant_id])
                        new_events += [
                            (tenant_id, event_types.MESSAGE_SENT, phone_sent_event(r)) for r in rows
                        ]
                    envelopes = []
                    if new_events and events is not None:
                        append_many = getattr(events, "append_many", None)
                        if append_many is not None:
                            envelopes = list(await append_many(conn, new_events))
                        else:
                            envelopes = [await events.append(conn, t, ty, d) for t, ty, d in new_events]
                break
            except sa.exc.DBAPIError:
                if attempt == self.ATTEMPTS - 1:
                    raise
                log.warning(
                    "web ingest: phone messages not stored (attempt %d), retrying", attempt + 1, exc_info=True
                )
                await asyncio.sleep(0.05 * (attempt + 1))
        self.stored_phone += len(new_events)
        if envelopes:
            try:
                await events.emit(envelopes)
            except Exception:
                log.exception("phone message events stored but not emitted")
