"""The POST /api/messages body on its own (no app): the model picked by ``type``, every error with its
code, field and message as the API answers it, and ``normalize``'s (wa_id, type, content)."""

from __future__ import annotations

import base64

import pytest

from control_plane import errors
from control_plane.messaging import models

TO = "+1 650 555 1234"
WA = "16505551234"


def validate(**body):
    return models.SEND_MESSAGE.model_validate({"to": TO, **body})


def error_of(**body) -> tuple[str, str, str | None, str]:
    with pytest.raises(errors.GatewayError) as caught:
        validate(**body)
    exc = caught.value
    return type(exc).__name__, exc.code, exc.field, exc.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"text": "Hi", "preview_url": True}, ("text", {"text": "Hi", "preview_url": True})),
        ({"type": "text", "text": " Hi "}, ("text", {"text": " Hi ", "preview_url": False})),  # as sent
        (
            {
                "type": "image",
                "media": {"url": "https://e.com/a.jpg", "mime_type": "IMAGE/JPEG"},
                "caption": "c",
            },
            ("image", {"link": "https://e.com/a.jpg", "mime_type": "image/jpeg", "caption": "c"}),
        ),
        (
            {"type": "document", "media": {"id": "123", "filename": "a.pdf"}, "text": None},
            ("document", {"media_id": "123", "filename": "a.pdf"}),
        ),
        (
            {"type": "sticker", "media": {"base64": "aGk=", "mime_type": "image/webp"}},
            ("sticker", {"base64": "aGk=", "mime_type": "image/webp"}),
        ),
        (
            {"type": "location", "location": {"latitude": 1.5, "longitude": 2.5, "name": "Here"}},
            ("location", {"latitude": 1.5, "longitude": 2.5, "name": "Here"}),
        ),
        (
            {"type": "template", "template": {"name": "t", "language": "en_US"}},
            ("template", {"name": "t", "language": "en_US"}),
        ),
        (
            {"type": "reaction", "reaction": {"message_id": "m1", "emoji": ""}},
            ("reaction", {"message_id": "m1", "emoji": ""}),
        ),
    ],
)
def test_normalize_gives_the_stored_content(body, expected):
    assert models.normalize(validate(**body)) == (WA, *expected)


def test_interactive_content_is_the_cloud_api_object_as_sent():
    interactive = {
        "type": "list",
        "header": {"type": "text", "text": "Menu"},
        "body": {"text": " Pick one "},  # not stripped: sent as written
        "action": {
            "button": "Open",
            "sections": [{"title": "S", "rows": [{"id": "r1", "title": "R1", "description": "d"}]}],
        },
        "x_future_key": {"kept": True},
    }
    body = validate(type="interactive", interactive=interactive, reply_to="wamid.1")
    wa_id, kind, content = models.normalize(body)
    assert (wa_id, kind) == (WA, "interactive")
    assert content == {**interactive, "context": {"id": "wamid.1"}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "text"}, ("missing_field", "text", "'text' is required for a text message")),
        ({"text": "   "}, ("invalid_field", "text", "'text' is blank")),
        ({"text": "x" * 4097}, ("too_long", "text", "'text' is 4097 characters; the limit is 4096")),
        ({"to": "12ab", "text": "hi"}, ("invalid_number", "to", None)),
        (
            {"to": "0650 555 1234", "text": "hi"},
            ("invalid_number", "to", "'to' must start with the country code, not 0"),
        ),
        ({"type": "fax"}, ("invalid_field", "type", None)),
        (
            {"text": "hi", "media": {"url": "https://e.com"}},
            ("invalid_field", "media", "'media' does not belong in a text message"),
        ),
        (
            {"text": "hi", "caption": "c"},
            ("invalid_field", "caption", "a text message cannot have a caption"),
        ),
        (
            {"type": "audio", "media": {"url": "https://e.com/a"}, "caption": "c"},
            ("invalid_field", "caption", "a audio cannot have a caption"),
        ),
        (
            {"type": "image", "media": {"url": "https://e.com/a"}, "preview_url": True},
            ("invalid_field", "preview_url", "'preview_url' only applies to text"),
        ),
        ({"type": "image"}, ("missing_field", "media", "'media' is required for a image message")),
        (
            {"type": "image", "media": {}},
            ("invalid_field", "media", "'media' needs exactly one of url, id, base64"),
        ),
        (
            {"type": "image", "media": {"url": "ftp://e.com/a"}},
            ("invalid_field", "media.url", "'media.url' must be an http(s) URL"),
        ),
        ({"type": "image", "media": {"id": "abc"}}, ("invalid_field", "media.id", None)),
        ({"type": "image", "media": {"base64": "aGk="}}, ("missing_field", "media.mime_type", None)),
        (
            {"type": "image", "media": {"base64": "!!", "mime_type": "image/png"}},
            ("invalid_field", "media.base64", None),
        ),
        (
            {"type": "image", "media": {"url": "https://e.com/a", "mime_type": "image/gif"}},
            ("unsupported_media", "media.mime_type", None),
        ),
        (
            {"type": "image", "media": {"url": "https://e.com/a"}, "caption": "c" * 1025},
            ("too_long", "caption", None),
        ),
        (
            {"type": "template", "template": {"name": "t", "language": "english"}},
            ("invalid_field", "template.language", None),
        ),
        (
            {
                "type": "template",
                "template": {"name": "t", "language": "en", "components": [{"type": "button"}]},
            },
            ("missing_field", "template.components.0.index", None),
        ),
        (
            {"type": "interactive", "interactive": {"type": "flow"}},
            ("invalid_field", "interactive.type", None),
        ),
        (
            {"type": "interactive", "interactive": {"type": "button", "body": {}}},
            ("missing_field", "interactive.body.text", None),
        ),
        (
            {"type": "interactive", "interactive": {"type": "button", "body": {"text": "b"}}},
            ("missing_field", "interactive.action", None),
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "b"},
                    "action": {"buttons": [{"reply": {"id": "a", "title": "A"}}] * 2},
                },
            },
            ("invalid_field", "interactive.action.buttons.1", "button ids must be unique"),
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "body": {"text": "b"},
                    "action": {"button": "Go", "sections": [{"rows": []}]},
                },
            },
            ("missing_field", "interactive.action.sections.0.rows", "every section needs rows"),
        ),
        ({"type": "reaction", "reaction": {"emoji": "x"}}, ("missing_field", "reaction.message_id", None)),
        ({"text": "hi", "extra": 1}, ("unknown_field", "extra", "unknown field 'extra'")),
        ({"text": "hi", "provider": "pigeon"}, ("invalid_field", "provider", None)),
    ],
)
def test_invalid_bodies_name_the_field(body, expected):
    kind, code, field, message = error_of(**body)
    assert (kind, code, field) == ("InvalidInput", *expected[:2])
    if expected[2] is not None:
        assert message == expected[2]


def test_a_shape_error_inside_interactive_names_its_path_from_interactive():
    row = {"id": "r1", "title": "R1", "description": 5}  # passes the checks, not the model
    interactive = {
        "type": "list",
        "body": {"text": "b"},
        "action": {"button": "Go", "sections": [{"rows": [row]}]},
    }
    field = "interactive.action.sections.0.rows.0.description"
    assert error_of(type="interactive", interactive=interactive)[1:3] == ("invalid_field", field)
    assert error_of(type="interactive", interactive="x")[1:3] == ("invalid_field", "interactive")


def test_oversized_media_is_413():
    big = base64.b64encode(b"x" * (5 * 1024 * 1024 + 1)).decode()
    assert error_of(type="image", media={"base64": big, "mime_type": "image/png"})[:3] == (
        "PayloadTooLarge",
        "media_too_large",
        "media.base64",
    )
    assert error_of(type="video", media={"url": "https://e.com/v", "size": 17 * 1024 * 1024})[:3] == (
        "PayloadTooLarge",
        "media_too_large",
        "media",
    )


def test_a_message_that_quotes_braces_is_reported_verbatim():
    assert error_of(type="image", media={"url": "https://e.com/a", "mime_type": "{field}/{code}"})[3] == (
        "media type '{field}/{code}' is not supported for image; use one of image/jpeg, image/png"
    )
