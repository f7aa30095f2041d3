"""The request/response base models every route module uses, ``UTCDateTime``, and ``OneOf`` (a body
that is one of several models)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ParamSpec, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, PlainSerializer, Tag, TypeAdapter, ValidationError
from pydantic.json_schema import JsonSchemaMode
from pydantic_core import PydanticCustomError

from control_plane import errors
from control_plane.http.parsing import invalid_input

P = ParamSpec("P")
R = TypeVar("R")


def _iso_utc(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


UTCDateTime = Annotated[dt.datetime, PlainSerializer(_iso_utc, return_type=str, when_used="json")]


class RequestModel(BaseModel):
    """Bodies: unknown fields are an error, types are not coerced (a string is no number), strings are
    taken as sent (what the JSON Schema checks is what is stored: no stripping it cannot describe)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class QueryModel(BaseModel):
    """Query strings arrive as text: coercion is allowed, unknown parameters are not."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


COMPONENT_REF = "#/components/schemas/{model}"
CONFORMS_TO = "x-conforms-to"


def conforms_to(component: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a response model whose objects also satisfy a schema the OpenAPI
    document holds apart from the models (``components.schemas[component]``, e.g. the message shape's
    JSON Schema). The model's schema is marked ``x-conforms-to: component``; the document builder
    turns the mark into ``allOf: [{"$ref": ...}]`` (pydantic refuses references it did not make)."""

    def extra(schema: dict[str, Any]) -> None:
        schema[CONFORMS_TO] = component

    return extra


def needs_one_of(*names: str, exactly: bool = False) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a model whose validator wants at least one (``exactly``: exactly one)
    of these optional fields given and not null: the same rule in its JSON Schema (``anyOf`` /
    ``oneOf`` of one branch per field), so the document and the validation agree."""

    def extra(schema: dict[str, Any]) -> None:
        branches = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]
        schema["oneOf" if exactly else "anyOf"] = branches

    return extra


def with_examples(
    extra: Callable[[dict[str, Any]], None], *examples: Any
) -> Callable[[dict[str, Any]], None]:
    """A callable ``json_schema_extra`` (``needs_one_of``, ...) that also gives the schema its
    ``examples`` (what ``api/openapi_examples.py`` shows before making one up)."""

    def extra_with_examples(schema: dict[str, Any]) -> None:
        extra(schema)
        schema["examples"] = list(examples)

    return extra_with_examples


def needs_fields(*names: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a model whose fields ``names`` are declared optional (their check
    gives its own error, e.g. ``messaging.message_parts.need``) but are required and not null: its
    JSON Schema says so."""

    def extra(schema: dict[str, Any]) -> None:
        required = schema.setdefault("required", [])
        for name in names:
            required.append(name)
            prop = schema["properties"][name]
            prop.pop("default", None)
            kept = [s for s in prop.pop("anyOf", []) if s != {"type": "null"}]
            if len(kept) == 1:
                prop.update(kept[0])
            elif kept:
                prop["anyOf"] = kept

    return extra


class Ok(ResponseModel):
    ok: bool = True


class OneOf:
    """A request body that is one of several models, picked by the value of one key (a pydantic tagged
    union): validated as that model alone, documented as ``oneOf`` the models. A missing key means
    ``default``; an unknown value is a 422 naming the key, worded as for a ``Literal`` field.

    It stands where a body model class stands in ``Router.route(body=...)`` (``model_validate``,
    ``model_json_schema``, ``__name__``)."""

    def __init__(
        self,
        name: str,
        variants: Mapping[str, type[BaseModel]],
        *,
        key: str = "type",
        default: str | None = None,
        description: str | None = None,
    ) -> None:
        self.__name__ = name
        self.variants = dict(variants)
        self.key = key
        self.description = description
        expected = [repr(tag) for tag in self.variants]
        choices = f"{', '.join(expected[:-1])} or {expected[-1]}" if len(expected) > 1 else expected[0]

        def tag_of(value: Any) -> Any:
            return value.get(key, default) if isinstance(value, dict) else None

        tagged = tuple(Annotated[model, Tag(tag)] for tag, model in self.variants.items())
        discriminator = Discriminator(
            tag_of,
            custom_error_type="invalid_tag",
            custom_error_message=f"{key}: Input should be {choices}",
            custom_error_context={"code": "invalid_field", "field": key},
        )
        # Built at run time from ``variants``: a type to pydantic, a value to mypy.
        union: Any = Annotated[Union[tagged], discriminator]  # noqa: UP007 (a tuple of types)
        self._adapter: TypeAdapter[Any] = TypeAdapter(union)

    def model_validate(self, obj: Any, /) -> Any:
        try:
            return self._adapter.validate_python(obj)
        except ValidationError as exc:
            raise invalid_input(exc, skip=1) from None  # paths start with the tag, not a field

    def model_json_schema(self, *, ref_template: str, mode: JsonSchemaMode) -> dict[str, Any]:
        schema = self._adapter.json_schema(ref_template=ref_template, mode=mode)
        schema["title"] = self.__name__
        if self.description:
            schema["description"] = self.description
        return schema


def reports_invalid_input(check: Callable[P, R]) -> Callable[P, R]:
    """For a pydantic validator whose checks raise ``errors.InvalidInput``: pydantic reports the error
    like its own (in field order), and the API answers it as raised (422, same code, message, field).
    Other errors (``PayloadTooLarge``) pass through pydantic as they are."""

    @functools.wraps(check)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return check(*args, **kwargs)
        except errors.InvalidInput as exc:
            # "message" last in the context: pydantic fills the template key by key, so a message that
            # quotes the client's input is inserted verbatim.
            context = {"code": exc.code, "field": exc.field, "message": exc.message}
            raise PydanticCustomError(exc.code, "{message}", context) from None

    return checked
