"""Request input: the raw body within a limit, JSON parsing, and pydantic validation whose first error
becomes one ``InvalidInput`` naming the field (422)."""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control_plane import errors, text_repair


class BodySchema(Protocol):
    """What validates a request body: a pydantic model class, or ``models.OneOf``."""

    def model_validate(self, obj: Any, /) -> Any: ...


def invalid_input(exc: ValidationError, skip: int = 0, at: str = "") -> errors.InvalidInput:
    """The validation errors as the API reports them: the first one's code and field (dotted path)
    named, and every one of them in ``field_errors`` (a form shows them all at once).

    An error whose context names a ``code`` (``models.reports_invalid_input``, ``models.OneOf``) keeps
    its code, message and field. ``skip``: leading path items that are not fields (the tag pydantic
    puts first in a tagged union's paths); ``at``: the path of the part validated, when not the body."""
    found: list[errors.GatewayError] = [_one_error(err, skip, at) for err in exc.errors(include_url=False)]
    return errors.InvalidInput.all_of(found)


def _one_error(err: Any, skip: int, at: str) -> errors.InvalidInput:
    path = [at] if at else []
    loc = ".".join([*path, *(str(p) for p in err["loc"][skip:])]) or None
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if "code" in ctx:  # raised as a domain error (models.reports_invalid_input) or a custom one
        return errors.InvalidInput(err["msg"], code=ctx["code"], field=ctx.get("field", loc))
    if kind == "extra_forbidden":
        return errors.InvalidInput(f"unknown field '{loc}'", code="unknown_field", field=loc)
    if kind == "missing":
        return errors.InvalidInput(f"field '{loc}' is required", code="missing_field", field=loc)
    msg = err["msg"]
    return errors.InvalidInput(
        f"{loc}: {msg}" if loc else msg, code="invalid_field" if loc else "invalid_body", field=loc
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 past it, checked before and while reading)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
        if length <= request.client_max_size:  # the common case: aiohttp reads exactly that much, once
            return await request.read()
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent: an int when it is whole (``38.0``, ``1e3``), as
    JSON Schema counts it (an ``integer`` field takes it), else a float."""
    value = float(text)
    return int(value) if value.is_integer() else value


# What json.loads uses for a str, without its checks per call.
_decode_json = json.JSONDecoder(parse_float=_number).decode

# Objects and arrays nested deeper than this are refused (400 ``too_deep``): no route needs more than
# a handful of levels (Meta's deliveries about 8), and deep nesting costs recursion everywhere after.
MAX_JSON_DEPTH = 64


def parse_json(raw: bytes) -> Any:
    """The body as JSON; 400 ``malformed_json`` when it is not JSON, ``too_deep`` past
    ``MAX_JSON_DEPTH`` levels of objects and arrays (read from the bytes before anything is built,
    when they are UTF-8: deep or not, a body is never walked object by object)."""
    if not raw.strip():
        raise errors.BadRequest("request body is empty; expected a JSON object", code="malformed_json")
    # Fewer brackets than the limit cannot nest past it (the common case: two C-speed counts).
    brackets = raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH
    # json.loads also reads UTF-16/32 (only asked when the brackets could nest too deep)
    utf8 = brackets and json.detect_encoding(raw[:4]).startswith("utf-8")
    if brackets and utf8 and raw_json_depth(raw) > MAX_JSON_DEPTH:
        raise _too_deep()
    try:
        if raw[0] == 0x7B and raw[1:2] != b"\x00":  # "{", then not a NUL: json.loads reads it as UTF-8 too
            data = _decode_json(raw.decode("utf-8", "surrogatepass"))
        else:
            data = json.loads(raw, parse_float=_number)  # anything else: its encoding detection (UTF-16/32)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"request body is not valid JSON: {exc}", code="malformed_json") from None
    except RecursionError:  # nested past the interpreter's limit: deeper than ours anyway
        raise _too_deep() from None
    if brackets and not utf8 and json_depth(data) > MAX_JSON_DEPTH:
        raise _too_deep()
    return data


def _too_deep() -> errors.BadRequest:
    return errors.BadRequest(
        f"request body nests objects or arrays deeper than {MAX_JSON_DEPTH} levels", code="too_deep"
    )


def json_depth(data: Any) -> int:
    """How deeply objects and arrays nest in parsed JSON (a scalar: 0), without recursion."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


# A JSON string, escapes included (``raw_json_depth`` drops them: brackets inside are text); one left
# open runs to the end. Possessive, and any byte after a backslash: every match that starts at a quote
# succeeds, so the search never rescans (linear on any input, JSON or not). Then the tables that keep
# only brackets, as +1 (open) and -1 (close) once read as signed bytes.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def raw_json_depth(raw: bytes) -> int:
    """How deeply objects and arrays nest in UTF-8 JSON text, from the bytes at C speed: strings
    dropped, brackets as +1/-1, the highest running sum (about 20 ns a byte, where building and walking
    the parsed value costs about 1 µs an object). Exact on JSON; on other text an estimate (a body
    refused for it may be malformed as well: 400 either way)."""
    steps = _JSON_STRING.sub(b"", raw).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


# Path ids: ASCII digits only (str.isdigit() also takes '¹' and '٣'), no sign, within BIGINT.
_PATH_INT = re.compile(r"[0-9]{1,18}")


def path_int(raw: str) -> int | None:
    """A numeric path segment as an int, or None (the caller answers 404) for anything else:
    non-ASCII digits, signs, spaces, leading '+', values past a BIGINT or 0."""
    if not _PATH_INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if value > 0 else None


async def parse_body(request: web.Request, schema: BodySchema, limit: int, *, required: bool = True) -> Any:
    """The body validated by ``schema``. It is parsed as JSON whatever Content-Type says (curl's
    default is form-encoded); an empty one is ``{}`` where the body is optional (not ``required``) and
    a 400 ``missing_body`` where it is required."""
    raw = await read_body(request, limit)
    if not raw.strip():
        if required:
            name = getattr(schema, "__name__", "a JSON object")
            raise errors.BadRequest(
                f"this route needs a JSON body ({name}); the request has none", code="missing_body"
            )
        raw = b"{}"
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise errors.InvalidInput("request body must be a JSON object", code="invalid_body")
    if raw[:1] != b"{" or text_repair.may_have_lone_surrogates(raw):  # not UTF-8 JSON: walked anyway
        refuse_lone_surrogates(data)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from None


def refuse_lone_surrogates(data: Any) -> None:
    """422 ``invalid_unicode`` naming the first field whose text is no Unicode (a lone UTF-16
    surrogate, ``"\\ud800"`` in JSON): it could be stored nowhere (``control_plane/text_repair.py``)."""
    where = text_repair.find_lone_surrogate(data)
    if where is not None:
        raise errors.InvalidInput(
            f"'{where}' is not Unicode text: it holds a lone UTF-16 surrogate (such as \\ud800)",
            code=text_repair.CODE,
            field=where,
        )


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        data[key] = values if len(values) > 1 else values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from None
