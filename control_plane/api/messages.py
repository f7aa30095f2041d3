"""``/api/messages``: send (queued in the outbox, 202), read one message with its history, and the
tenant's messaging settings (the fallback template used outside the 24 h window)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ConfigDict, Field

from control_plane import errors
from control_plane.db import messages as messages_db
from control_plane.db import outbox as outbox_db
from control_plane.db import sessions as sessions_db
from control_plane.db.metadata import HEX_ID_RE as _MESSAGE_ID
from control_plane.events import (
    PHONE_ROUTE_REASON,
    message_data,
    message_error,
    message_origin,
)
from control_plane.http.models import RequestModel, ResponseModel, UTCDateTime, conforms_to
from control_plane.http.routing import Router
from control_plane.messaging import models
from control_plane.messaging import outbox as outbox_service

log = logging.getLogger(__name__)
TAGS = ("messages",)
router = Router(tags=TAGS, auth="tenant")
MESSAGE_COMPONENT = "Message"  # the message shape's schema in the OpenAPI document (api/openapi.py)


class MessageAccepted(ResponseModel):
    id: str
    status: str = Field(description="queued for a new message; the current status for an idempotent replay")
    conversation_id: int
    duplicate: bool = Field(False, description="True when the idempotency key named an existing message")


class ErrorInfo(ResponseModel):
    code: str | None = None
    message: str | None = None


class TransitionOut(ResponseModel):
    status: str
    from_status: str | None = None
    at: UTCDateTime
    source: str = Field(description="dispatcher (our decisions) or provider (Meta's statuses, Web acks)")
    provider: str | None = None
    reason: str | None = None
    error: ErrorInfo | None = None


class ReactionOut(ResponseModel):
    model_config = ConfigDict(
        serialize_by_alias=True,
        validate_by_name=True,
        validate_by_alias=True,
        json_schema_serialization_defaults_required=True,
    )

    from_: str = Field(alias="from")
    emoji: str
    timestamp: str | None = None


class MessageBase(ResponseModel):
    """The message shape (``events.message_data``; the OpenAPI component ``Message``, from
    ``control_plane/schemas/message.schema.json``) plus the REST object's own keys (``id``, the
    status times): the REST message object and a conversation's history."""

    model_config = ConfigDict(
        serialize_by_alias=True,
        validate_by_name=True,
        validate_by_alias=True,
        json_schema_serialization_defaults_required=True,
        json_schema_extra=conforms_to(MESSAGE_COMPONENT),
    )

    id: str
    message_id: str = Field(description="The same as id (the message shape's name for it)")
    conversation_id: int
    provider: str | None = None
    direction: str
    origin: str = Field(description="contact, api, phone or business_app")
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    author: str | None = None
    contact_name: str | None = None
    type: str
    content: Any = None
    status: str
    provider_message_id: str | None = None
    provider_user_id: str | None = None
    timestamp: str | None = Field(
        None, description="The provider's time of the message (or of its acceptance)"
    )
    created_at: str = Field(description="When the gateway stored it (microseconds)")
    edited_at: str | None = None
    deleted_at: str | None = None
    error: ErrorInfo | None = None
    route_reason: str | None = Field(None, description="Which road carried it and why")
    reactions: list[ReactionOut] = Field(default_factory=list)
    sent_at: UTCDateTime | None = None
    delivered_at: UTCDateTime | None = None
    read_at: UTCDateTime | None = None
    failed_at: UTCDateTime | None = None


class MessageOut(MessageBase):
    requested_provider: str | None = None
    attempts: int | None = None
    idempotency_key: str | None = None
    updated_at: UTCDateTime
    transitions: list[TransitionOut] = Field(default_factory=list)


class FallbackTemplate(RequestModel):
    name: str = Field(min_length=1, max_length=512, description="The template's name (Meta: <= 512)")
    language: str = Field(min_length=2, max_length=16, pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    body_param: bool = Field(
        False, description="Pass the free-form text as the template's one body parameter"
    )


class MessagingSettingsIn(RequestModel):
    fallback_template: FallbackTemplate | None = Field(
        description="Sent instead of a free-form message when the Cloud API must carry it outside the "
        "24 h window; null removes it"
    )


class FallbackTemplateOut(ResponseModel):
    name: str
    language: str
    body_param: bool


class MessagingSettingsOut(ResponseModel):
    fallback_template: FallbackTemplateOut | None = None


def message_shape(
    msg: dict[str, Any], conv: dict[str, Any] | None, own_number: str | None, route_reason: str | None
) -> dict[str, Any]:
    """A stored message ``msg`` (a messages row) in the message shape (``events.message_data``), with
    its conversation ``conv``, the Web session's number and the outbox's route reason (None: not a
    send of the CRM), plus ``id`` and the status times."""
    row = dict(msg)
    row["content"] = (
        messages_db.load_json(msg["content"]) if isinstance(msg["content"], str) else msg["content"]
    )
    row["wa_id"] = conv["wa_id"] if conv else None
    row["contact_name"] = conv["contact_name"] if conv else None
    error = message_error(msg["error_code"], msg["error_message"]) if msg["error_code"] else None
    origin = message_origin(row)
    if route_reason is None and origin == "phone":
        route_reason = PHONE_ROUTE_REASON
    shape = message_data(
        row,
        business=own_number if msg["provider"] == "web" else None,
        error=error,
        route_reason=route_reason,
        origin=origin,
    )
    shape.update(
        id=msg["id"],
        sent_at=msg["sent_at"],
        delivered_at=msg["delivered_at"],
        read_at=msg["read_at"],
        failed_at=msg["failed_at"],
    )
    return shape


def _history(transitions: list[dict[str, Any]], facts: list[dict[str, Any]]) -> list[TransitionOut]:
    history: list[dict[str, Any]] = []
    for t in transitions:
        error = ErrorInfo(code=t["error_code"], message=t["error_message"]) if t["error_code"] else None
        history.append(
            {
                "status": t["to_status"],
                "from_status": t["from_status"],
                "at": t["at"],
                "source": "dispatcher",
                "provider": t["provider"],
                "reason": t["reason"],
                "error": error,
            }
        )
    for f in facts:
        error = ErrorInfo(code=f["error_code"], message=f["error_message"]) if f["error_code"] else None
        history.append(
            {
                "status": f["status"],
                "from_status": None,
                "at": f["occurred_at"] or f["created_at"],
                "source": "provider",
                "provider": f["provider"],
                "reason": None,
                "error": error,
            }
        )
    history.sort(key=lambda h: h["at"])
    return [TransitionOut(**h) for h in history]


def message_view(
    msg: dict[str, Any],
    box: dict[str, Any] | None,
    transitions: list[dict[str, Any]],
    facts: list[dict[str, Any]],
    *,
    conv: dict[str, Any] | None = None,
    own_number: str | None = None,
) -> MessageOut:
    shape = message_shape(msg, conv, own_number, box["route_reason"] if box else None)
    return MessageOut(
        **shape,
        requested_provider=box["requested_provider"] if box else None,
        attempts=box["attempts"] if box else None,
        idempotency_key=box["idempotency_key"] if box else None,
        updated_at=msg["updated_at"],
        transitions=_history(transitions, facts),
    )


@router.route(
    "POST",
    "/api/messages",
    body=models.SEND_MESSAGE,
    response=MessageAccepted,
    status=202,
    errors=(400, 401, 403, 404, 409, 413, 422, 503),
    max_body_bytes=models.ROUTE_BODY_LIMIT,
    summary="Queue a message (text, media, location, template, interactive, reaction); 202 once "
    "it is stored. The same idempotency key returns the same message and never sends again.",
)
async def send_message(request: web.Request, body: models.SendMessageIn) -> web.Response:
    tenant_id = request["tenant"]["id"]
    header_key = request.headers.get("Idempotency-Key")
    if header_key is not None and not 1 <= len(header_key.strip()) <= 128:
        raise errors.InvalidInput(
            "Idempotency-Key must be 1 to 128 characters", code="invalid_field", field="idempotency_key"
        )
    row, created = await outbox_service.enqueue(
        request.app["db"], tenant_id, body, idempotency_key=header_key.strip() if header_key else None
    )
    dispatcher = request.app.get("dispatcher")
    if created and dispatcher is not None:
        dispatcher.notify(tenant_id)
    if created:
        log.info("message queued tenant=%s id=%s type=%s", tenant_id, row["id"], row["type"])
    out = MessageAccepted(
        id=row["id"], status=row["status"], conversation_id=row["conversation_id"], duplicate=not created
    )
    return web.json_response(out.model_dump(mode="json"), status=202)


@router.route(
    "GET",
    "/api/messages/{message_id}",
    response=MessageOut,
    errors=(401, 403, 404),
    summary="A message: status, provider and its id, error, the road and why, and its history",
)
async def get_message(request: web.Request) -> MessageOut:
    tenant_id = request["tenant"]["id"]
    message_id = request.match_info["message_id"]
    if not _MESSAGE_ID.match(message_id):
        raise errors.NotFound("message not found", code="message_not_found")
    async with request.app["db"].connect() as conn:
        msg = await messages_db.get_message(conn, tenant_id, message_id)
        if msg is None:
            raise errors.NotFound("message not found", code="message_not_found")
        box = await outbox_db.get_outbox(conn, tenant_id, message_id)
        transitions = await outbox_db.list_transitions(conn, tenant_id, message_id)
        facts = await messages_db.list_status_events(conn, tenant_id, message_id)
        conv = await messages_db.get_conversation(conn, tenant_id, msg["conversation_id"])
        session = await sessions_db.get_session_state(conn, tenant_id)
    own_number = session["own_number"] if session else None
    return message_view(msg, box, transitions, facts, conv=conv, own_number=own_number)


def _settings_out(row: dict[str, Any] | None) -> MessagingSettingsOut:
    if not row or not row.get("fallback_template_name"):
        return MessagingSettingsOut(fallback_template=None)
    return MessagingSettingsOut(
        fallback_template=FallbackTemplateOut(
            name=row["fallback_template_name"],
            language=row["fallback_template_language"],
            body_param=bool(row["fallback_template_body_param"]),
        )
    )


@router.route(
    "GET",
    "/api/messaging/settings",
    response=MessagingSettingsOut,
    errors=(401, 403, 404),
    summary="The tenant's messaging settings (fallback template)",
)
async def get_settings(request: web.Request) -> MessagingSettingsOut:
    async with request.app["db"].connect() as conn:
        return _settings_out(await outbox_db.get_settings(conn, request["tenant"]["id"]))


@router.route(
    "PUT",
    "/api/messaging/settings",
    body=MessagingSettingsIn,
    response=MessagingSettingsOut,
    errors=(400, 401, 403, 404, 422),
    summary="Set or clear the fallback template used outside the 24 h window",
)
async def put_settings(request: web.Request, body: MessagingSettingsIn) -> MessagingSettingsOut:
    tenant_id = request["tenant"]["id"]
    tpl = body.fallback_template
    values = {
        "fallback_template_name": tpl.name if tpl else None,
        "fallback_template_language": tpl.language if tpl else None,
        "fallback_template_body_param": bool(tpl.body_param) if tpl else False,
    }
    async with request.app["db"].begin() as conn:
        row = await outbox_db.save_settings(conn, tenant_id, values)
    dispatcher = request.app.get("dispatcher")
    if dispatcher is not None:
        dispatcher.invalidate(tenant_id)
    return _settings_out(row)
