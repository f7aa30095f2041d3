"""``POST /api/messages``: one request model per message type, and ``normalize``.

The body is ``SEND_MESSAGE``: one of the models below, picked by ``type`` (``text`` when absent), each
with only its own part (``text``, ``media``, ``location``, ``template``, ``interactive``, ``reaction``)
and the fields every message has (``SendMessageIn``). Validation does every check (the part's shape,
what depends on the type, the limits Meta enforces on text, captions and media); every failure
is an ``InvalidInput`` naming the field (422), or ``PayloadTooLarge`` for oversized media (413).

``normalize`` returns ``(wa_id, type, content)`` where ``content`` is the provider-neutral form stored
on the message (the keys docs/EVENTS.md gives inbound messages): text ``{"text", "preview_url"}``;
media ``{"link" | "media_id" | "base64", "mime_type"?, "caption"?, "filename"?}``; location
``{"latitude", "longitude", "name"?, "address"?}``; template ``{"name", "language", "components"?}``;
interactive: the Cloud API object; reaction ``{"message_id", "emoji"}``; plus ``context: {"id"}`` for a
reply. The dispatcher turns it into each road's request.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from control_plane import errors
from control_plane.db.conversations import is_bsuid
from control_plane.http.models import OneOf, RequestModel, reports_invalid_input
from control_plane.messaging.media_schemas import (
    AudioMediaIn,
    DocumentMediaIn,
    ImageMediaIn,
    StickerMediaIn,
    VideoMediaIn,
)
from control_plane.messaging.message_parts import (
    InteractiveIn,
    LocationIn,
    MediaIn,
    ReactionIn,
    TemplateIn,
    check_interactive,
    check_media,
    max_len,
    media_content,
    need,
)

PARTS = ("text", "media", "location", "template", "interactive", "reaction")
MAX_TEXT = 4096
ROUTE_BODY_LIMIT = 8 * 1024 * 1024

_NUMBER_SEPARATORS = re.compile(r"[ ().\-]")
_PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")
# What ``to`` accepts, as a pattern the OpenAPI document also carries: a phone number in international
# form (7 to 15 digits, the first not 0, after an optional + or 00; spaces, parentheses, dots and
# hyphens anywhere), or a contact's business-scoped user id (``db.conversations.is_bsuid``).
_SEP = r"[ ().\-]*"
_PHONE = re.compile(rf"{_SEP}(?:\+{_SEP}|0{_SEP}0{_SEP})?[1-9](?:{_SEP}[0-9]){{6,14}}{_SEP}")
TO_PATTERN = rf"^(?:{_PHONE.pattern}| *[A-Z]{{2}}\.(?:ENT\.)?[A-Za-z0-9]{{1,128}} *)$"


def normalize_number(raw: str) -> str:
    """``+1 (650) 555-1234`` -> ``16505551234``; 422 unless 7..15 digits (E.164) remain (``TO_PATTERN``).
    A contact's business-scoped user id (``US.13491208655302741918``) is kept as it is."""
    if is_bsuid(raw.strip(" ")):
        return raw.strip(" ")
    value = _NUMBER_SEPARATORS.sub("", raw)
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    if _PHONE.fullmatch(raw) is None:
        if value.isascii() and value.isdigit() and 7 <= len(value) <= 15 and value.startswith("0"):
            raise errors.InvalidInput(
                "'to' must start with the country code, not 0", code="invalid_number", field="to"
            )
        raise errors.InvalidInput(
            "'to' must be a phone number in international form: 7 to 15 digits, "
            "optionally with + and separators (or a contact's BSUID, e.g. US.13491208655302741918)",
            code="invalid_number",
            field="to",
        )
    return value


@reports_invalid_input
def _international(value: str) -> str:
    normalize_number(value)
    return value


class SendMessageIn(RequestModel):
    """What every message has; each type's model adds its part."""

    KIND: ClassVar[str]  # the value of ``type``
    PART: ClassVar[str]  # the field holding the message itself
    WHAT: ClassVar[str]  # "a text message", for "'text' is required for a text message"

    to: Annotated[str, AfterValidator(_international)] = Field(
        min_length=1,
        max_length=160,
        description="The recipient's number (digits, + allowed), or the business-scoped user id "
        "(BSUID) of a contact known only by it",
        json_schema_extra={"pattern": TO_PATTERN},
    )
    type: str
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

    @model_validator(mode="before")
    @classmethod
    @reports_invalid_input
    def _only_its_part(cls, data: Any) -> Any:
        """Another type's part (or caption, preview_url) is an error naming it; a null one is ignored.
        This type's part is required."""
        if not isinstance(data, dict):
            return data
        for name in PARTS:
            if name != cls.PART and data.get(name) is not None:
                raise errors.InvalidInput(
                    f"'{name}' does not belong in a {cls.KIND} message", code="invalid_field", field=name
                )
        if data.get("caption") is not None and "caption" not in cls.model_fields:
            what = f"a {cls.KIND}" if cls.PART == "media" else f"a {cls.KIND} message"
            raise errors.InvalidInput(f"{what} cannot have a caption", code="invalid_field", field="caption")
        if data.get("preview_url") is not None and "preview_url" not in cls.model_fields:
            raise errors.InvalidInput(
                "'preview_url' only applies to text", code="invalid_field", field="preview_url"
            )
        need(data.get(cls.PART), cls.PART, cls.WHAT)
        return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}

    def content(self) -> dict[str, Any]:
        """The provider-neutral content stored on the message (a new dict)."""
        raise NotImplementedError


@reports_invalid_input
def _text_fits(text: str) -> str:
    need(text, "text", "a text message")
    if not text.strip():
        raise errors.InvalidInput("'text' is blank", code="invalid_field", field="text")
    max_len(text, MAX_TEXT, "text")
    return text


class TextMessageIn(SendMessageIn):
    """A text message (``type`` may be left out)."""

    KIND, PART, WHAT = "text", "text", "a text message"
    type: Literal["text"] = "text"
    text: Annotated[str, AfterValidator(_text_fits)] = Field(
        description=f"The text (<= {MAX_TEXT} characters, not blank)",
        json_schema_extra={"minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S"},
    )
    preview_url: bool | None = Field(default=None, description="Show a preview of the first URL")

    def content(self) -> dict[str, Any]:
        return {"text": self.text, "preview_url": bool(self.preview_url)}


class _MediaMessageIn(SendMessageIn):
    PART = "media"
    media: MediaIn

    @model_validator(mode="after")
    @reports_invalid_input
    def _media_fits(self) -> Self:
        check_media(self.KIND, self.media, self.caption_text)
        return self

    @property
    def caption_text(self) -> str | None:
        return None

    def content(self) -> dict[str, Any]:
        return media_content(self.media, self.caption_text)


class _CaptionedMediaMessageIn(_MediaMessageIn):
    caption: str | None = Field(
        default=None, description="<= 1024 characters", json_schema_extra={"maxLength": 1024}
    )

    @property
    def caption_text(self) -> str | None:
        return self.caption


class ImageMessageIn(_CaptionedMediaMessageIn):
    """An image: JPEG or PNG, <= 5 MB."""

    KIND, WHAT = "image", "a image message"
    type: Literal["image"]
    media: ImageMediaIn


class VideoMessageIn(_CaptionedMediaMessageIn):
    """A video: MP4 or 3GPP, <= 16 MB."""

    KIND, WHAT = "video", "a video message"
    type: Literal["video"]
    media: VideoMediaIn


class DocumentMessageIn(_CaptionedMediaMessageIn):
    """A document: any type, <= 100 MB (``media.filename`` names it)."""

    KIND, WHAT = "document", "a document message"
    type: Literal["document"]
    media: DocumentMediaIn


class AudioMessageIn(_MediaMessageIn):
    """Audio: AAC, AMR, MPEG, MP4 or OGG (opus), <= 16 MB; no caption."""

    KIND, WHAT = "audio", "a audio message"
    type: Literal["audio"]
    media: AudioMediaIn


class StickerMessageIn(_MediaMessageIn):
    """A sticker: WebP, <= 500 KB; no caption."""

    KIND, WHAT = "sticker", "a sticker message"
    type: Literal["sticker"]
    media: StickerMediaIn


class LocationMessageIn(SendMessageIn):
    """A location pin."""

    KIND, PART, WHAT = "location", "location", "a location message"
    type: Literal["location"]
    location: LocationIn

    def content(self) -> dict[str, Any]:
        return {k: v for k, v in self.location.model_dump().items() if v is not None}


class _SelfCheckingPart(Protocol):
    """A part with checks beyond its fields' own (``InvalidInput`` naming the field) that gives the
    content stored on the message itself."""

    def check(self) -> None: ...

    def content(self) -> dict[str, Any]: ...


class _SelfCheckingPartMessageIn(SendMessageIn):
    """A message whose part checks itself once parsed and gives the stored content (template,
    reaction)."""

    @model_validator(mode="after")
    @reports_invalid_input
    def _part_fits(self) -> Self:
        self._part().check()
        return self

    def _part(self) -> _SelfCheckingPart:
        return getattr(self, self.PART)  # the field PART names

    def content(self) -> dict[str, Any]:
        return self._part().content()


class TemplateMessageIn(_SelfCheckingPartMessageIn):
    """An approved template (the only kind of message allowed outside the 24 h window)."""

    KIND, PART, WHAT = "template", "template", "a template message"
    type: Literal["template"]
    template: TemplateIn


class InteractiveMessageIn(SendMessageIn):
    """Reply buttons or a list, in the Cloud API's shape (other Cloud API keys are passed on)."""

    KIND, PART, WHAT = "interactive", "interactive", "an interactive message"
    type: Literal["interactive"]
    interactive: Annotated[InteractiveIn, BeforeValidator(reports_invalid_input(check_interactive))]

    def content(self) -> dict[str, Any]:
        return self.interactive.model_dump(exclude_unset=True)


class ReactionMessageIn(_SelfCheckingPartMessageIn):
    """A reaction to a message (an empty emoji removes it)."""

    KIND, PART, WHAT = "reaction", "reaction", "a reaction"
    type: Literal["reaction"]
    reaction: ReactionIn


MESSAGE_MODELS: tuple[type[SendMessageIn], ...] = (
    TextMessageIn,
    ImageMessageIn,
    DocumentMessageIn,
    AudioMessageIn,
    VideoMessageIn,
    StickerMessageIn,
    LocationMessageIn,
    TemplateMessageIn,
    InteractiveMessageIn,
    ReactionMessageIn,
)
SEND_MESSAGE = OneOf(
    "SendMessageIn",
    {model.KIND: model for model in MESSAGE_MODELS},
    key="type",
    default="text",
    description="One outbound message: ``type`` (text when absent) and the matching part: ``text``, "
    "``media`` (image, document, audio, video, sticker), ``location``, ``template``, ``interactive`` "
    "(Cloud API shape), ``reaction``.",
)


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
    """``(wa_id, type, content)`` for a validated request."""
    content = body.content()
    if body.reply_to:
        content["context"] = {"id": body.reply_to}
    return normalize_number(body.to), body.KIND, content


def request_hash(wa_id: str, kind: str, content: dict[str, Any], provider: str) -> str:
    """What makes two requests "the same" for an idempotency key."""
    blob = json.dumps([wa_id, kind, content, provider], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
