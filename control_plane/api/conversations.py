"""``/api/conversations``: the tenant's conversations (newest activity first), a conversation's
messages (cursor pagination, newest first), and mark-as-read (forwarded to the road that carried
the conversation)."""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any

from aiohttp import web
from pydantic import Field

from control_plane import errors
from control_plane.api.messages import MessageBase, message_shape, message_view
from control_plane.db import messages as messages_db
from control_plane.db import outbox as outbox_db
from control_plane.db import sessions as sessions_db
from control_plane.events import strip_inline_media
from control_plane.http.models import QueryModel, ResponseModel, UTCDateTime
from control_plane.http.parsing import path_int
from control_plane.http.routing import Router
from control_plane.messaging.routing import window_open_until

TAGS = ("conversations",)
router = Router(tags=TAGS, auth="tenant")


# A cursor is a keyset position, ``<microseconds since 1970 UTC>.<key>`` (the last row's time and id):
# every string of this shape is a position to start after, so the pattern in the document is the rule.
_CURSOR_AT = r"[0-9]{1,17}"
CONVERSATION_CURSOR = re.compile(rf"({_CURSOR_AT})\.([0-9]{{1,18}})")
MESSAGE_CURSOR = re.compile(rf"({_CURSOR_AT})\.([0-9a-f]{{32}})")
_EPOCH = dt.datetime(1970, 1, 1)


def _cursor(pattern: re.Pattern[str]) -> Any:
    return Field(
        default=None,
        max_length=64,
        description="next_cursor of the previous page",
        json_schema_extra={"pattern": f"^{pattern.pattern}$"},
    )


class PageQuery(QueryModel):
    limit: int = Field(default=50, ge=1, le=200)


class ConversationPageQuery(PageQuery):
    cursor: str | None = _cursor(CONVERSATION_CURSOR)


class MessagePageQuery(PageQuery):
    cursor: str | None = _cursor(MESSAGE_CURSOR)


class LastMessage(ResponseModel):
    id: str
    direction: str
    type: str
    status: str
    provider: str | None = None
    content: Any = None
    created_at: UTCDateTime


class ConversationOut(ResponseModel):
    id: int
    wa_id: str = Field(
        description="The contact's canonical id: phone digits, or its business-scoped user id (BSUID) "
        "while the number is unknown; a WhatsApp Web group's id (`<id>@g.us`); `<n>@lid` for a Web "
        "contact whose number WhatsApp Web does not know"
    )
    kind: str = Field("individual", description="`group` (a WhatsApp Web group) or `individual`")
    contact_name: str | None = None
    bsuid: str | None = Field(None, description="The contact's business-scoped user id (Meta's user_id)")
    username: str | None = Field(None, description="The contact's WhatsApp username, when it has one")
    provider: str | None = Field(None, description="The road that last carried this conversation")
    unread_count: int
    last_message_at: UTCDateTime | None = None
    last_inbound_at: UTCDateTime | None = None
    window_open_until: UTCDateTime | None = Field(
        None,
        description="Until when free-form messages are allowed on the Cloud API (24 h after the "
        "contact's last message)",
    )
    window_open: bool
    last_message: LastMessage | None = None


class ConversationPage(ResponseModel):
    items: list[ConversationOut]
    next_cursor: str | None = None


class MessageItem(MessageBase):
    error_code: str | None = None
    error_message: str | None = None
    provider_timestamp: UTCDateTime | None = None


class MessagePage(ResponseModel):
    items: list[MessageItem]
    next_cursor: str | None = None


class ReadResult(ResponseModel):
    ok: bool = True
    unread_count: int = 0
    provider: str | None = None
    forwarded: bool = Field(description="The road was told (WhatsApp shows blue ticks to the contact)")
    error: str | None = Field(
        None, description="Why it was not forwarded (the unread count is cleared anyway)"
    )


def _encode(at: dt.datetime | None, key: Any) -> str:
    micros = 0 if at is None else (at.replace(tzinfo=None) - _EPOCH) // dt.timedelta(microseconds=1)
    return f"{max(micros, 0)}.{key}"


def _decode(cursor: str, pattern: re.Pattern[str], key_type: type) -> tuple[dt.datetime, Any]:
    found = pattern.fullmatch(cursor)
    if found is None:
        raise errors.InvalidInput(
            "cursor is not one this API returned", code="invalid_cursor", field="cursor"
        )
    return _EPOCH + dt.timedelta(microseconds=int(found[1])), key_type(found[2])


def _conversation_id(request: web.Request) -> int:
    value = path_int(request.match_info["conversation_id"])
    if value is None:
        raise errors.NotFound("conversation not found", code="conversation_not_found")
    return value


async def _conversation(request: web.Request, conn: Any) -> dict[str, Any]:
    conv = await messages_db.get_conversation(conn, request["tenant"]["id"], _conversation_id(request))
    if conv is None:
        raise errors.NotFound("conversation not found", code="conversation_not_found")
    return conv


# The paged listings: GET with a PageQuery (limit, cursor), the same errors.
_listing = functools.partial(router.route, "GET", errors=(401, 403, 404, 422))


@_listing(
    "/api/conversations",
    query=ConversationPageQuery,
    response=ConversationPage,
    summary="Conversations, newest activity first: last message, unread count, provider, window",
)
async def list_conversations(request: web.Request, query: ConversationPageQuery) -> ConversationPage:
    tenant_id = request["tenant"]["id"]
    before = _decode(query.cursor, CONVERSATION_CURSOR, int) if query.cursor is not None else None
    now = messages_db.utcnow()
    async with request.app["db"].connect() as conn:
        rows = await messages_db.list_conversations(conn, tenant_id, limit=query.limit + 1, before=before)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        last = await outbox_db.messages_by_ids(
            conn, tenant_id, [r["last_message_id"] for r in rows if r["last_message_id"]]
        )
    items = []
    for r in rows:
        m = last.get(r["last_message_id"] or "")
        until = window_open_until(r["last_inbound_at"])
        items.append(
            ConversationOut(
                id=r["id"],
                wa_id=r["wa_id"],
                kind=r.get("kind") or "individual",
                contact_name=r["contact_name"],
                bsuid=r.get("bsuid"),
                username=r.get("username"),
                provider=r["provider_last"],
                unread_count=r["unread_count"],
                last_message_at=r["last_message_at"],
                last_inbound_at=r["last_inbound_at"],
                window_open_until=until,
                window_open=bool(until and until > now),
                last_message=LastMessage(
                    id=m["id"],
                    direction=m["direction"],
                    type=m["type"],
                    status=m["status"],
                    provider=m["provider"],
                    content=strip_inline_media(messages_db.load_json(m["content"])),
                    created_at=m["created_at"],
                )
                if m
                else None,
            )
        )
    next_cursor = _encode(rows[-1]["last_message_at"], rows[-1]["id"]) if more and rows else None
    return ConversationPage(items=items, next_cursor=next_cursor)


@_listing(
    "/api/conversations/{conversation_id}/messages",
    query=MessagePageQuery,
    response=MessagePage,
    summary="A conversation's messages, newest first (cursor pagination)",
)
async def list_messages(request: web.Request, query: MessagePageQuery) -> MessagePage:
    tenant_id = request["tenant"]["id"]
    before = _decode(query.cursor, MESSAGE_CURSOR, str) if query.cursor is not None else None
    async with request.app["db"].connect() as conn:
        conv = await _conversation(request, conn)
        rows = await messages_db.list_messages(
            conn, tenant_id, conv["id"], limit=query.limit + 1, before=before
        )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        reasons = await outbox_db.route_reasons(
            conn, tenant_id, [r["id"] for r in rows if r["direction"] == "outbound"]
        )
        session = await sessions_db.get_session_state(conn, tenant_id)
    own_number = session["own_number"] if session else None
    items = [
        MessageItem(
            **message_shape(r, conv, own_number, reasons.get(r["id"])),
            error_code=r["error_code"],
            error_message=r["error_message"],
            provider_timestamp=r["provider_timestamp"],
        )
        for r in rows
    ]
    next_cursor = _encode(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return MessagePage(items=items, next_cursor=next_cursor)


@router.route(
    "POST",
    "/api/conversations/{conversation_id}/read",
    response=ReadResult,
    errors=(401, 403, 404),
    summary="Mark the conversation read; forwarded to the Web session or the Cloud API that carried it",
)
async def mark_read(request: web.Request) -> ReadResult:
    tenant_id = request["tenant"]["id"]
    async with request.app["db"].begin() as conn:
        conv = await _conversation(request, conn)
        await messages_db.mark_conversation_read(conn, tenant_id, conv["id"])
    dispatcher = request.app.get("dispatcher")
    if dispatcher is None:
        return ReadResult(provider=conv["provider_last"], forwarded=False, error="messaging is not running")
    result = await dispatcher.mark_read(tenant_id, conv)
    return ReadResult(provider=result["provider"], forwarded=result["forwarded"], error=result["error"])


__all__ = ["message_view", "router"]
