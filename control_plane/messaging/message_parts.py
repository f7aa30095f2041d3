"""The parts of an outbound message (``POST /api/messages``): media, location, template, interactive,
reaction. Each is a pydantic model that documents its shape, and the checks that depend on the type or
on the limits Meta enforces (text, caption and media sizes, media types).

Checks raise ``InvalidInput`` naming the field (422), or ``PayloadTooLarge`` for oversized media (413);
the message models call them from their validators (see ``models.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from control_plane import errors
from control_plane.http.models import RequestModel, needs_fields
from control_plane.http.parsing import invalid_input

MAX_CAPTION = 1024
# Cloud API limits (bytes) and accepted MIME types per media kind (cloud-api.md §3).
MEDIA_LIMITS = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}
MEDIA_MIME: dict[str, set[str] | None] = {
    "image": {"image/jpeg", "image/png"},
    "video": {"video/mp4", "video/3gpp"},
    "audio": {"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg", "audio/ogg; codecs=opus"},
    "sticker": {"image/webp"},
    "document": None,  # any
}
CAPTIONED = ("image", "video", "document")
# Inline (base64) media is stored with the message: kept small; larger files go by url or media id.
MAX_INLINE_MEDIA = 5 * 1024 * 1024
URL = re.compile(r"^https?://[^\s/]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")  # fullmatch: "$" would let a final newline through
TEMPLATE_COMPONENTS = ("header", "body", "button", "footer")


def need(value: Any, field: str, what: str) -> Any:
    """``value``, unless it is missing or empty: 422 "'field' is required for <what>"."""
    if value is None or value == "" or value == []:
        raise errors.InvalidInput(f"'{field}' is required for {what}", code="missing_field", field=field)
    return value


def max_len(value: str | None, limit: int, field: str) -> None:
    if value is not None and len(value) > limit:
        raise errors.InvalidInput(
            f"'{field}' is {len(value)} characters; the limit is {limit}", code="too_long", field=field
        )


def _invalid(message: str, field: str) -> errors.InvalidInput:
    return errors.InvalidInput(message, code="invalid_field", field=field)


def _missing(message: str, field: str) -> errors.InvalidInput:
    return errors.InvalidInput(message, code="missing_field", field=field)


# --- media -------------------------------------------------------------------------------------------


class MediaIn(RequestModel):
    """Exactly one of ``url``, ``id``, ``base64``."""

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

    @property
    def mime(self) -> str | None:
        return (self.mime_type or "").lower() or None


MEDIA_ID = re.compile(r"[0-9]+")


def _inline_size(media: MediaIn) -> int:
    """The decoded size of inline media (422 unless valid, non-empty base64 with a MIME type)."""
    if media.mime is None:
        raise _missing("'media.mime_type' is required with base64", "media.mime_type")
    try:
        data = base64.b64decode(media.base64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("'media.base64' is not valid base64", "media.base64") from None
    if not data:
        raise _invalid("'media.base64' is empty", "media.base64")
    if len(data) > MAX_INLINE_MEDIA:
        raise errors.PayloadTooLarge(
            f"inline media is {len(data)} bytes; send files over {MAX_INLINE_MEDIA} bytes by url or media id",
            code="media_too_large",
            field="media.base64",
        )
    return len(data)


def _check_source(media: MediaIn) -> int | None:
    """Checks the one source the media names; returns its size in bytes when known."""
    if media.url is not None:
        if not URL.match(media.url):
            raise _invalid("'media.url' must be an http(s) URL", "media.url")
        return media.size
    if media.id is not None:
        if not MEDIA_ID.fullmatch(media.id):
            raise _invalid("'media.id' must be a Cloud API media id (digits)", "media.id")
        return media.size
    return _inline_size(media)


def check_media(kind: str, media: MediaIn, caption: str | None) -> None:
    """One source, a MIME type the kind accepts, within WhatsApp's size limit (413 past it), a caption
    only where the kind has one."""
    sources = [k for k in ("url", "id", "base64") if getattr(media, k) is not None]
    if len(sources) != 1:
        raise _invalid("'media' needs exactly one of url, id, base64", "media")
    mime, allowed = media.mime, MEDIA_MIME[kind]
    if mime is not None and allowed is not None and mime not in allowed:
        raise errors.InvalidInput(
            f"media type {mime!r} is not supported for {kind}; use one of {', '.join(sorted(allowed))}",
            code="unsupported_media",
            field="media.mime_type",
        )
    size = _check_source(media)
    if media.size is not None and (size is None or media.size > size):
        size = media.size  # a declared size past the limit is refused whatever the source
    if size is not None and size > MEDIA_LIMITS[kind]:
        raise errors.PayloadTooLarge(
            f"{kind} is {size} bytes; WhatsApp accepts at most {MEDIA_LIMITS[kind]}",
            code="media_too_large",
            field="media",
        )
    if caption is not None:
        if kind not in CAPTIONED:
            raise _invalid(f"a {kind} cannot have a caption", "caption")
        max_len(caption, MAX_CAPTION, "caption")


def media_content(media: MediaIn, caption: str | None) -> dict[str, Any]:
    """``{"link" | "media_id" | "base64", "mime_type"?, "filename"?, "caption"?}`` (checked media)."""
    part: dict[str, Any] = {}
    if media.url is not None:
        part["link"] = media.url
    elif media.id is not None:
        part["media_id"] = media.id
    else:
        part["base64"] = media.base64
    if media.mime:
        part["mime_type"] = media.mime
    if media.filename:  # only documents carry a filename on the Cloud API; kept for the Web road
        part["filename"] = media.filename
    if caption is not None:
        part["caption"] = caption
    return part


# --- location, reaction, template --------------------------------------------------------------------


class LocationIn(RequestModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=1000)
    address: str | None = Field(default=None, max_length=1000)


class ReactionIn(RequestModel):
    model_config = ConfigDict(json_schema_extra=needs_fields("message_id", "emoji"))

    message_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Required: the message"
    )
    emoji: str | None = Field(
        default=None, max_length=16, description="Required: the emoji; an empty string removes a reaction"
    )

    def check(self) -> None:
        need(self.message_id, "reaction.message_id", "a reaction")
        if self.emoji is None:
            raise _missing("'reaction.emoji' is required (empty string removes a reaction)", "reaction.emoji")

    def content(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "emoji": self.emoji}


def _when_type(value: str, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {"type": {"const": value}}}, "then": then}


# What ``_check_component`` and ``_check_parameter`` accept, for the document (components are passed
# on to Meta as written, so they stay dicts).
_PARAMETER_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    **_when_type(
        "text",
        {"required": ["text"], "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 1024}}},
    ),
}
_COMPONENT_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": list(TEMPLATE_COMPONENTS)},
        "parameters": {"type": "array", "items": _PARAMETER_SCHEMA},
    },
    **_when_type("button", {"required": ["index"], "properties": {"index": {"not": {"type": "null"}}}}),
}


class TemplateIn(RequestModel):
    model_config = ConfigDict(json_schema_extra=needs_fields("name", "language"))

    name: str | None = Field(
        default=None, min_length=1, max_length=512, description="Required: the template's name"
    )
    language: str | None = Field(
        default=None,
        max_length=16,
        description="Required: its language code, like en or en_US",
        json_schema_extra={"pattern": f"^{_LANGUAGE.pattern}$"},
    )
    components: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=20,
        json_schema_extra={"items": _COMPONENT_SCHEMA},
        description="Cloud API template components: {type: header|body|button|footer, parameters: "
        "[{type, text?, ...}], index (buttons)}",
    )

    def check(self) -> None:
        need(self.name, "template.name", "a template message")
        need(self.language, "template.language", "a template message")
        if not _LANGUAGE.fullmatch(self.language or ""):
            raise _invalid("'template.language' must be a code like en or en_US", "template.language")
        for i, comp in enumerate(self.components or []):
            _check_component(f"template.components.{i}", comp)

    def content(self) -> dict[str, Any]:
        """``{"name", "language", "components"?}``."""
        part: dict[str, Any] = {"name": self.name, "language": self.language}
        if self.components:
            part["components"] = self.components
        return part


def _check_component(field: str, comp: dict[str, Any]) -> None:
    if comp.get("type") not in TEMPLATE_COMPONENTS:
        raise _invalid(f"'{field}.type' must be header, body, button or footer", f"{field}.type")
    params = comp.get("parameters", [])
    if not isinstance(params, list):
        raise _invalid(f"'{field}.parameters' must be a list", f"{field}.parameters")
    for j, p in enumerate(params):
        _check_parameter(f"{field}.parameters.{j}", p)
    if comp.get("type") == "button" and comp.get("index") is None:
        raise _missing(f"'{field}.index' is required for a button component", f"{field}.index")


def _check_parameter(field: str, p: Any) -> None:
    if not isinstance(p, dict) or not isinstance(p.get("type"), str):
        raise _missing(f"'{field}' needs a type", f"{field}.type")
    if p["type"] == "text":
        if not isinstance(p.get("text"), str) or not p["text"]:
            raise _missing(f"'{field}.text' is required", f"{field}.text")
        max_len(p["text"], 1024, f"{field}.text")


# --- interactive -------------------------------------------------------------------------------------


class CloudObject(BaseModel):
    """A Cloud API object as the client wrote it: keys beyond the documented ones are passed on, and
    text is sent as given (not stripped)."""

    model_config = ConfigDict(extra="allow", strict=True)


class InteractiveText(CloudObject):
    text: str = Field(min_length=1, max_length=1024)


class InteractiveFooter(CloudObject):
    text: str = Field(max_length=60)


class ButtonReply(CloudObject):
    id: str = Field(min_length=1, max_length=256, description="Unique among the buttons")
    title: str = Field(min_length=1, max_length=20)


class ReplyButton(CloudObject):
    type: str = Field(default="reply", description="reply")
    reply: ButtonReply


class ButtonAction(CloudObject):
    buttons: list[ReplyButton] = Field(min_length=1, max_length=3)


class ListRow(CloudObject):
    id: str = Field(min_length=1)
    title: str = Field(max_length=24)
    description: str | None = Field(default=None, max_length=72)


class ListSection(CloudObject):
    title: str | None = None
    rows: list[ListRow] = Field(min_length=1, description="At most 10 rows over all sections")


class ListAction(CloudObject):
    button: str = Field(min_length=1, max_length=20, description="The label of the button opening the list")
    sections: list[ListSection] = Field(min_length=1, max_length=10)


class _Interactive(CloudObject):
    header: dict[str, Any] | None = Field(default=None, description="Cloud API header, passed on")
    body: InteractiveText = Field(description="text: at most 1024 characters")
    footer: InteractiveFooter | None = Field(default=None, description="text: at most 60 characters")


class InteractiveButtonsIn(_Interactive):
    """Up to 3 reply buttons."""

    type: Literal["button"]
    action: ButtonAction


class InteractiveListIn(_Interactive):
    """A list: up to 10 sections, 10 rows in all."""

    type: Literal["list"]
    action: ListAction


def check_interactive(data: Any) -> Any:
    """Today's checks, with their codes and fields, before the models see the object (a non-object is
    left to the model's own error)."""
    if not isinstance(data, dict):
        return data
    kind = data.get("type")
    if kind not in ("button", "list"):
        raise _invalid("'interactive.type' must be button or list", "interactive.type")
    body = data.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
        raise _missing("'interactive.body.text' is required", "interactive.body.text")
    max_len(body["text"], 1024, "interactive.body.text")
    footer = data.get("footer")
    if footer is not None:
        if not isinstance(footer, dict) or not isinstance(footer.get("text"), str):
            raise _invalid("'interactive.footer' must be {text}", "interactive.footer")
        max_len(footer["text"], 60, "interactive.footer.text")
    action = data.get("action")
    if not isinstance(action, dict):
        raise _missing("'interactive.action' is required", "interactive.action")
    if kind == "button":
        _check_buttons(action)
    else:
        _check_list(action)
    return data


def _check_buttons(action: dict[str, Any]) -> None:
    field = "interactive.action.buttons"
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not buttons:
        raise _missing(f"'{field}' needs 1 to 3 buttons", field)
    if len(buttons) > 3:
        raise errors.InvalidInput(
            f"{len(buttons)} buttons: WhatsApp allows at most 3", code="too_many_buttons", field=field
        )
    ids = set()
    for i, button in enumerate(buttons):
        reply = button.get("reply") if isinstance(button, dict) else None
        item = f"{field}.{i}"
        if not (
            isinstance(reply, dict)
            and isinstance(reply.get("id"), str)
            and reply["id"]
            and isinstance(reply.get("title"), str)
            and reply["title"]
        ):
            raise _invalid(f"'{item}' must be {{type: reply, reply: {{id, title}}}}", item)
        max_len(reply["title"], 20, f"{item}.reply.title")
        max_len(reply["id"], 256, f"{item}.reply.id")
        if reply["id"] in ids:
            raise _invalid("button ids must be unique", item)
        ids.add(reply["id"])


def _check_list(action: dict[str, Any]) -> None:
    label = action.get("button")
    if not isinstance(label, str) or not label:
        raise _missing(
            "'interactive.action.button' (the list's label) is required", "interactive.action.button"
        )
    max_len(label, 20, "interactive.action.button")
    sections = action.get("sections")
    if not isinstance(sections, list) or not sections or len(sections) > 10:
        raise _invalid("'interactive.action.sections' needs 1 to 10 sections", "interactive.action.sections")
    rows = sum(_check_rows(s, section) for s, section in enumerate(sections))
    if rows > 10:
        raise errors.InvalidInput(
            f"{rows} rows: a list allows at most 10",
            code="too_many_rows",
            field="interactive.action.sections",
        )


def _check_rows(s: int, section: Any) -> int:
    items = section.get("rows") if isinstance(section, dict) else None
    if not isinstance(items, list) or not items:
        raise _missing("every section needs rows", f"interactive.action.sections.{s}.rows")
    for r, row in enumerate(items):
        field = f"interactive.action.sections.{s}.rows.{r}"
        if not isinstance(row, dict) or not row.get("id") or not isinstance(row.get("title"), str):
            raise _invalid(f"'{field}' needs id and title", field)
        max_len(row["title"], 24, f"{field}.title")
        if row.get("description") is not None:
            max_len(str(row["description"]), 72, f"{field}.description")
    return len(items)


def _named_from_interactive(value: Any, validate: ValidatorFunctionWrapHandler) -> Any:
    """A shape error below ``interactive`` names its path from ``interactive`` (without the union's tag,
    ``button`` or ``list``, that pydantic puts first)."""
    try:
        return validate(value)
    except ValidationError as exc:
        raise invalid_input(exc, skip=1, at="interactive") from None


InteractiveIn = Annotated[
    InteractiveButtonsIn | InteractiveListIn,
    Field(discriminator="type"),
    WrapValidator(_named_from_interactive),
]
