"""``POST /api/messages``: the request model and its per-type validation.

Pydantic checks shapes; ``normalize`` checks what depends on the type (and the limits Meta enforces,
shared/reference/cloud-api.md §2-3) and returns ``(wa_id, type, content)`` where ``content`` is the
provider-neutral form stored on the message (the keys docs/EVENTS.md gives inbound messages):
text ``{"text", "preview_url"}``; media ``{"link" | "media_id" | "base64", "mime_type"?, "caption"?,
"filename"?}``; location ``{"latitude", "longitude", "name"?, "address"?}``; template ``{"name",
"language", "components"?}``; interactive: the Cloud API object; reaction ``{"message_id", "emoji"}``;
plus ``context: {"id"}`` for a reply. The dispatcher turns it into each road's request.
Every failure is an ``InvalidInput`` naming the field (422), or ``PayloadTooLarge`` for oversized
media (413).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, Literal

from pydantic import Field

from control_plane import errors
from control_plane.http.models import RequestModel

MessageType = Literal[
    "text",
    "image",
    "document",
    "audio",
    "video",
    "sticker",
    "location",
    "template",
    "interactive",
    "reaction",
]
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
MAX_TEXT = 4096
MAX_CAPTION = 1024
# Cloud API limits (bytes) and accepted MIME types per media kind (cloud-api.md §3).
MEDIA_LIMITS = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}
MEDIA_MIME = {
    "image": {"image/jpeg", "image/png"},
    "video": {"video/mp4", "video/3gpp"},
    "audio": {"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg", "audio/ogg; codecs=opus"},
    "sticker": {"image/webp"},
    "document": None,  # any
}
# Inline (base64) media is stored with the message: kept small; larger files go by url or media id.
MAX_INLINE_MEDIA = 5 * 1024 * 1024
ROUTE_BODY_LIMIT = 8 * 1024 * 1024

_NUMBER_SEPARATORS = re.compile(r"[\s().\-]")
_PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


class MediaIn(RequestModel):
    url: str | None = Field(default=None, max_length=2048, description="http(s) URL the provider fetches")
    id: str | None = Field(
        default=None, max_length=128, description="A Cloud API media id (Business API only)"
    )
    base64: str | None = Field(default=None, description="Inline content (<= 5 MB decoded)")
    mime_type: str | None = Field(default=None, max_length=100)
    filename: str | None = Field(default=None, max_length=240)
    size: int | None = Field(
        default=None, ge=0, description="Size in bytes when known (checked against limits)"
    )


class LocationIn(RequestModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=1000)
    address: str | None = Field(default=None, max_length=1000)


class TemplateIn(RequestModel):
    name: str | None = Field(default=None, max_length=512)
    language: str | None = Field(default=None, max_length=16)
    components: list[dict[str, Any]] | None = Field(default=None, max_length=20)


class ReactionIn(RequestModel):
    message_id: str | None = Field(default=None, max_length=128)
    emoji: str | None = Field(default=None, max_length=16)


class SendMessageIn(RequestModel):
    """One outbound message. Set ``type`` and the matching part: ``text`` (string), ``media`` (image,
    document, audio, video, sticker), ``location``, ``template``, ``interactive`` (Cloud API shape),
    ``reaction``."""

    to: str = Field(min_length=1, max_length=40, description="The recipient's number (digits, + allowed)")
    type: MessageType = "text"
    text: str | None = Field(default=None, description="Body of a text message (<= 4096 characters)")
    preview_url: bool | None = None
    media: MediaIn | None = None
    caption: str | None = Field(default=None, description="Caption of image/video/document (<= 1024)")
    location: LocationIn | None = None
    template: TemplateIn | None = None
    interactive: dict[str, Any] | None = None
    reaction: ReactionIn | None = None
    reply_to: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Our message id or the provider's id of the message answered",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Same key -> same message, never sent twice "
        "(also accepted as the Idempotency-Key header)",
    )
    provider: Literal["auto", "web", "business_api"] = "auto"


def normalize_number(raw: str) -> str:
    """``+1 (650) 555-1234`` -> ``16505551234``; 422 unless 7..15 digits (E.164) remain."""
    value = _NUMBER_SEPARATORS.sub("", raw.strip())
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    if not value.isdigit() or not 7 <= len(value) <= 15:
        raise errors.InvalidInput(
            "'to' must be a phone number in international form: 7 to 15 digits, "
            "optionally with + and separators",
            code="invalid_number",
            field="to",
        )
    if value.startswith("0"):
        raise errors.InvalidInput(
            "'to' must start with the country code, not 0", code="invalid_number", field="to"
        )
    return value


def _need(value: Any, field: str, what: str) -> Any:
    if value is None or value == "" or value == []:
        raise errors.InvalidInput(f"'{field}' is required for {what}", code="missing_field", field=field)
    return value


def _max_len(value: str | None, limit: int, field: str) -> None:
    if value is not None and len(value) > limit:
        raise errors.InvalidInput(
            f"'{field}' is {len(value)} characters; the limit is {limit}", code="too_long", field=field
        )


def _media(kind: str, media: MediaIn, caption: str | None) -> dict[str, Any]:
    sources = [k for k in ("url", "id", "base64") if getattr(media, k) is not None]
    if len(sources) != 1:
        raise errors.InvalidInput(
            "'media' needs exactly one of url, id, base64", code="invalid_field", field="media"
        )
    mime = (media.mime_type or "").lower() or None
    allowed = MEDIA_MIME[kind]
    if mime is not None and allowed is not None and mime not in allowed:
        raise errors.InvalidInput(
            f"media type {mime!r} is not supported for {kind}; use one of {', '.join(sorted(allowed))}",
            code="unsupported_media",
            field="media.mime_type",
        )
    part: dict[str, Any] = {}
    size = media.size
    if media.url is not None:
        if not re.match(r"^https?://[^\s/]+", media.url):
            raise errors.InvalidInput(
                "'media.url' must be an http(s) URL", code="invalid_field", field="media.url"
            )
        part["link"] = media.url
    elif media.id is not None:
        if not media.id.isdigit():
            raise errors.InvalidInput(
                "'media.id' must be a Cloud API media id (digits)", code="invalid_field", field="media.id"
            )
        part["media_id"] = media.id
    else:
        if mime is None:
            raise errors.InvalidInput(
                "'media.mime_type' is required with base64", code="missing_field", field="media.mime_type"
            )
        try:
            data = base64.b64decode(media.base64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise errors.InvalidInput(
                "'media.base64' is not valid base64", code="invalid_field", field="media.base64"
            ) from None
        if not data:
            raise errors.InvalidInput("'media.base64' is empty", code="invalid_field", field="media.base64")
        size = len(data)
        if size > MAX_INLINE_MEDIA:
            raise errors.PayloadTooLarge(
                f"inline media is {size} bytes; send files over {MAX_INLINE_MEDIA} bytes by url or media id",
                code="media_too_large",
                field="media.base64",
            )
        part["base64"] = media.base64
    if size is not None and size > MEDIA_LIMITS[kind]:
        raise errors.PayloadTooLarge(
            f"{kind} is {size} bytes; WhatsApp accepts at most {MEDIA_LIMITS[kind]}",
            code="media_too_large",
            field="media",
        )
    if mime:
        part["mime_type"] = mime
    if media.filename:
        if kind != "document" and media.base64 is None:
            pass  # only documents carry a filename on the Cloud API; kept for the Web road
        part["filename"] = media.filename
    if caption is not None:
        if kind not in ("image", "video", "document"):
            raise errors.InvalidInput(
                f"a {kind} cannot have a caption", code="invalid_field", field="caption"
            )
        _max_len(caption, MAX_CAPTION, "caption")
        part["caption"] = caption
    return part


def _interactive(data: dict[str, Any]) -> dict[str, Any]:
    kind = data.get("type")
    if kind not in ("button", "list"):
        raise errors.InvalidInput(
            "'interactive.type' must be button or list", code="invalid_field", field="interactive.type"
        )
    body = data.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        raise errors.InvalidInput(
            "'interactive.body.text' is required", code="missing_field", field="interactive.body.text"
        )
    _max_len(body["text"], 1024, "interactive.body.text")
    footer = data.get("footer")
    if footer is not None:
        if not isinstance(footer, dict) or not isinstance(footer.get("text"), str):
            raise errors.InvalidInput(
                "'interactive.footer' must be {text}", code="invalid_field", field="interactive.footer"
            )
        _max_len(footer["text"], 60, "interactive.footer.text")
    action = data.get("action")
    if not isinstance(action, dict):
        raise errors.InvalidInput(
            "'interactive.action' is required", code="missing_field", field="interactive.action"
        )
    if kind == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not buttons:
            raise errors.InvalidInput(
                "'interactive.action.buttons' needs 1 to 3 buttons",
                code="missing_field",
                field="interactive.action.buttons",
            )
        if len(buttons) > 3:
            raise errors.InvalidInput(
                f"{len(buttons)} buttons: WhatsApp allows at most 3",
                code="too_many_buttons",
                field="interactive.action.buttons",
            )
        ids = set()
        for i, button in enumerate(buttons):
            reply = button.get("reply") if isinstance(button, dict) else None
            field = f"interactive.action.buttons.{i}"
            if (
                not isinstance(reply, dict)
                or not isinstance(reply.get("id"), str)
                or not reply["id"]
                or not isinstance(reply.get("title"), str)
                or not reply["title"]
            ):
                raise errors.InvalidInput(
                    f"'{field}' must be {{type: reply, reply: {{id, title}}}}",
                    code="invalid_field",
                    field=field,
                )
            _max_len(reply["title"], 20, f"{field}.reply.title")
            _max_len(reply["id"], 256, f"{field}.reply.id")
            if reply["id"] in ids:
                raise errors.InvalidInput("button ids must be unique", code="invalid_field", field=field)
            ids.add(reply["id"])
    else:
        label = action.get("button")
        if not isinstance(label, str) or not label:
            raise errors.InvalidInput(
                "'interactive.action.button' (the list's label) is required",
                code="missing_field",
                field="interactive.action.button",
            )
        _max_len(label, 20, "interactive.action.button")
        sections = action.get("sections")
        if not isinstance(sections, list) or not sections or len(sections) > 10:
            raise errors.InvalidInput(
                "'interactive.action.sections' needs 1 to 10 sections",
                code="invalid_field",
                field="interactive.action.sections",
            )
        rows = 0
        for s, section in enumerate(sections):
            items = section.get("rows") if isinstance(section, dict) else None
            if not isinstance(items, list) or not items:
                raise errors.InvalidInput(
                    "every section needs rows",
                    code="missing_field",
                    field=f"interactive.action.sections.{s}.rows",
                )
            for r, row in enumerate(items):
                field = f"interactive.action.sections.{s}.rows.{r}"
                if not isinstance(row, dict) or not row.get("id") or not isinstance(row.get("title"), str):
                    raise errors.InvalidInput(
                        f"'{field}' needs id and title", code="invalid_field", field=field
                    )
                _max_len(row["title"], 24, f"{field}.title")
                if row.get("description") is not None:
                    _max_len(str(row["description"]), 72, f"{field}.description")
                rows += 1
        if rows > 10:
            raise errors.InvalidInput(
                f"{rows} rows: a list allows at most 10",
                code="too_many_rows",
                field="interactive.action.sections",
            )
    try:
        json.dumps(data)
    except (TypeError, ValueError):
        raise errors.InvalidInput(
            "'interactive' must be JSON", code="invalid_field", field="interactive"
        ) from None
    return data


def _template(t: TemplateIn) -> dict[str, Any]:
    _need(t.name, "template.name", "a template message")
    _need(t.language, "template.language", "a template message")
    if not re.match(r"^[a-z]{2,3}(_[A-Z]{2})?$", t.language or ""):
        raise errors.InvalidInput(
            "'template.language' must be a code like en or en_US",
            code="invalid_field",
            field="template.language",
        )
    components = t.components or []
    for i, comp in enumerate(components):
        field = f"template.components.{i}"
        if comp.get("type") not in ("header", "body", "button", "footer"):
            raise errors.InvalidInput(
                f"'{field}.type' must be header, body or button", code="invalid_field", field=f"{field}.type"
            )
        params = comp.get("parameters", [])
        if not isinstance(params, list):
            raise errors.InvalidInput(
                f"'{field}.parameters' must be a list", code="invalid_field", field=f"{field}.parameters"
            )
        for j, p in enumerate(params):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise errors.InvalidInput(
                    f"'{field}.parameters.{j}' needs a type",
                    code="missing_field",
                    field=f"{field}.parameters.{j}.type",
                )
            if p["type"] == "text":
                if not isinstance(p.get("text"), str) or not p["text"]:
                    raise errors.InvalidInput(
                        f"'{field}.parameters.{j}.text' is required",
                        code="missing_field",
                        field=f"{field}.parameters.{j}.text",
                    )
                _max_len(p["text"], 1024, f"{field}.parameters.{j}.text")
        if comp.get("type") == "button" and comp.get("index") is None:
            raise errors.InvalidInput(
                f"'{field}.index' is required for a button component",
                code="missing_field",
                field=f"{field}.index",
            )
    part: dict[str, Any] = {"name": t.name, "language": t.language}
    if components:
        part["components"] = components
    return part


def check_template_against_known(part: dict[str, Any], known: dict[str, Any] | None) -> None:
    """When the tenant's synced templates know this one: it must be approved and get as many body/header
    parameters as its text has placeholders (422 naming the component otherwise)."""
    if known is None:
        return
    if known.get("status") and known["status"] != "APPROVED":
        raise errors.InvalidInput(
            f"template {part['name']} is {known['status']}, not APPROVED",
            code="template_not_approved",
            field="template.name",
        )
    given: dict[str, int] = {}
    for comp in part.get("components") or []:
        if comp.get("type") in ("header", "body"):
            given[comp["type"]] = len(comp.get("parameters") or [])
    for comp in known.get("components") or []:
        kind = str(comp.get("type", "")).lower()
        if kind not in ("header", "body") or not isinstance(comp.get("text"), str):
            continue
        expected = len(_PLACEHOLDER.findall(comp["text"]))
        if given.get(kind, 0) != expected:
            raise errors.InvalidInput(
                f"template {part['name']} needs {expected} {kind} parameter(s), got {given.get(kind, 0)}",
                code="template_parameters",
                field="template.components",
            )


def normalize(body: SendMessageIn) -> tuple[str, str, dict[str, Any]]:
    """``(wa_id, type, content)`` for a valid request; 422/413 naming the field otherwise."""
    wa_id = normalize_number(body.to)
    kind = body.type
    parts = {
        "text": body.text,
        "media": body.media,
        "location": body.location,
        "template": body.template,
        "interactive": body.interactive,
        "reaction": body.reaction,
    }
    expected = "media" if kind in MEDIA_TYPES else kind
    for name, value in parts.items():
        if value is not None and name != expected:
            raise errors.InvalidInput(
                f"'{name}' does not belong in a {kind} message", code="invalid_field", field=name
            )
    if body.caption is not None and kind not in MEDIA_TYPES:
        raise errors.InvalidInput(
            f"a {kind} message cannot have a caption", code="invalid_field", field="caption"
        )
    if body.preview_url is not None and kind != "text":
        raise errors.InvalidInput(
            "'preview_url' only applies to text", code="invalid_field", field="preview_url"
        )
    content: dict[str, Any]
    if kind == "text":
        text = _need(body.text, "text", "a text message")
        if not text.strip():
            raise errors.InvalidInput("'text' is blank", code="invalid_field", field="text")
        _max_len(text, MAX_TEXT, "text")
        content = {"text": text, "preview_url": bool(body.preview_url)}
    elif kind in MEDIA_TYPES:
        content = _media(kind, _need(body.media, "media", f"a {kind} message"), body.caption)
    elif kind == "location":
        loc = _need(body.location, "location", "a location message")
        content = {k: v for k, v in loc.model_dump().items() if v is not None}
    elif kind == "template":
        content = _template(_need(body.template, "template", "a template message"))
    elif kind == "interactive":
        content = dict(_interactive(_need(body.interactive, "interactive", "an interactive message")))
    else:  # reaction
        reaction = _need(body.reaction, "reaction", "a reaction")
        _need(reaction.message_id, "reaction.message_id", "a reaction")
        if reaction.emoji is None:
            raise errors.InvalidInput(
                "'reaction.emoji' is required (empty string removes a reaction)",
                code="missing_field",
                field="reaction.emoji",
            )
        content = {"message_id": reaction.message_id, "emoji": reaction.emoji}
    if body.reply_to:
        content["context"] = {"id": body.reply_to}
    return wa_id, kind, content


def request_hash(wa_id: str, kind: str, content: dict[str, Any], provider: str) -> str:
    """What makes two requests "the same" for an idempotency key."""
    blob = json.dumps([wa_id, kind, content, provider], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
