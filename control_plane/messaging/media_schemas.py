"""The ``media`` of each media message type as the OpenAPI document shows it: ``MediaIn`` with what
``message_parts.check_media`` enforces for that type in its JSON Schema (one source, the source's
form, the MIME types and size limit of the type), so the document and the validation agree."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict

from control_plane.http.models import needs_one_of
from control_plane.messaging.message_parts import (
    MAX_INLINE_MEDIA,
    MEDIA_ID,
    MEDIA_LIMITS,
    MEDIA_MIME,
    URL,
    MediaIn,
)

# What ``check_media`` accepts, for the document: one source; a URL, digits or base64; a MIME type the
# kind takes (any case, or empty); a declared size within the kind's limit; the base64 within the inline
# limit, with a MIME type.
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"


def _any_case(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


def media_rules(kind: str) -> Any:
    """``json_schema_extra`` of the ``media`` of a ``kind`` message."""
    limit = MEDIA_LIMITS[kind]
    allowed = MEDIA_MIME[kind]

    def extra(schema: dict[str, Any]) -> None:
        needs_one_of("url", "id", "base64", exactly=True)(schema)
        props = schema["properties"]
        props["url"]["pattern"] = URL.pattern
        props["id"]["pattern"] = f"^{MEDIA_ID.pattern}$"
        props["base64"].update(pattern=_BASE64, maxLength=4 * (min(limit, MAX_INLINE_MEDIA) // 3))
        props["size"]["maximum"] = limit
        if allowed is not None:
            props["mime_type"]["pattern"] = f"^(?:{'|'.join(_any_case(m) for m in sorted(allowed))})?$"
        schema["allOf"] = [
            {
                "if": {"required": ["base64"], "properties": {"base64": {"type": "string"}}},
                "then": {
                    "required": ["mime_type"],
                    "properties": {"mime_type": {"type": "string", "minLength": 1}},
                },
            }
        ]

    return extra


class ImageMediaIn(MediaIn):
    model_config = ConfigDict(json_schema_extra=media_rules("image"))


class VideoMediaIn(MediaIn):
    model_config = ConfigDict(json_schema_extra=media_rules("video"))


class DocumentMediaIn(MediaIn):
    model_config = ConfigDict(json_schema_extra=media_rules("document"))


class AudioMediaIn(MediaIn):
    model_config = ConfigDict(json_schema_extra=media_rules("audio"))


class StickerMediaIn(MediaIn):
    model_config = ConfigDict(json_schema_extra=media_rules("sticker"))
