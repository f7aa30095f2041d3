"""Examples for the OpenAPI document: every operation's JSON request body and JSON answer gets an
``example``, built from its schema. A schema's own ``example``/``examples`` (a model field's
``Field(examples=[...])``) wins; otherwise the example is made from the property's name, its
pattern, its format, its enum or its type, so it validates against the schema it illustrates
(``tests/api/test_openapi_docs.py`` checks that)."""

from __future__ import annotations

from typing import Any

# By property name: values that read like the real thing.
NAME_EXAMPLES: dict[str, Any] = {
    "id": "8f14e45fceea167a5a36dedd4bea2543",
    "tenant_id": "8f14e45fceea167a5a36dedd4bea2543",
    "message_id": "c9f0f895fb98ab9159f51fd0297e236d",
    "conversation_id": 42,
    "name": "Acme Ltd",
    "label": "CRM production",
    "api_key": "wgk_3Jx9mQ2vY7pL0aZrT5uW8sKcN1bHdFeG",
    "prefix": "wgk_3Jx9",
    "to": "+15551234567",
    "wa_id": "15551234567",
    "text": "Hello! Your order has shipped.",
    "body": "Hello! Your order has shipped.",
    "caption": "Your invoice",
    "filename": "invoice.pdf",
    "link": "https://example.com/invoice.pdf",
    "url": "https://example.com/invoice.pdf",
    "phone_number_id": "106540352242922",
    "waba_id": "102290129340398",
    "access_token": "EAAG-your-system-user-token",
    "app_secret": "your-meta-app-secret",
    "verify_token": "a-long-random-verify-token",
    "api_version": "v23.0",
    "own_number": "15551234567",
    "qr": "2@AbCdEf...,xyz==,abc==,def==",
    "message": "what happened, in words",
    "code": "invalid_field",
    "field": "to",
    "cursor": "eyJiIjoxMjN9",
    "idempotency_key": "order-1234-shipped",
    "language": "en_US",
    "emoji": "👍",
    "latitude": 38.7223,
    "longitude": -9.1393,
    "from": "+15557654321",
    "author": "+15557654321",
    "contact_name": "Maria Silva",
    "provider_message_id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
    "route_reason": "fallback_policy web_first: the Web session is ready",
    "content": {"text": "Hello! Your order has shipped."},
    "error_code": "131047",
    "error_message": "Re-engagement message",
    "status": "queued",
    "since": "2026-01-15T09:30:00.000Z",
    "reason": "requested",
}
_CONTAINERS: dict[str, type] = {"object": dict, "array": list}

# By pattern (the request models' ``pattern=``): a value that matches it.
PATTERN_EXAMPLES: dict[str, str] = {
    r"^[0-9]{1,64}$": "106540352242922",
    r"^v[0-9]{1,3}\.[0-9]$": "v23.0",
    r"^https?://": "https://example.com/invoice.pdf",
    r"^\+?[0-9][0-9 ()+-]*(@(c\.us|lid))?$": "+15551234567",
    r"^[A-Za-z0-9_ -]+$": "spam",
    r"^[0-9][0-9-]*@g\.us$": "120363025246125486@g.us",
    r"^[0-9]{1,24}@lid$": "123456789012345@lid",
    r"^\+?[0-9][0-9 ()+-]*$": "+15551234567",
    r"^[a-z]{2,3}(_[A-Z]{2})?$": "en_US",
}
TIMESTAMP = "2026-01-15T09:30:00.000Z"
FORMAT_EXAMPLES = {
    "date-time": TIMESTAMP,
    "uri": "https://example.com/invoice.pdf",
    "email": "ops@example.com",
}
MAX_DEPTH = 8


def example_for(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """An example value for ``schema`` (``$ref``s into ``components`` followed)."""
    return _example(schema, components, None, 0)


def _example(schema: Any, components: dict[str, Any], name: str | None, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if "$ref" in schema:
        target = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return _example(
            {**target, **{k: v for k, v in schema.items() if k != "$ref"}}, components, name, depth + 1
        )
    for key in ("example", "const"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("default") is not None:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            variants = [v for v in schema[key] if v.get("type") != "null"] or schema[key]
            if len(variants) < len(schema[key]) and not _hinted(variants[0], name):
                return None  # optional and nothing telling to show: left out (null in an answer)
            return _example(variants[0], components, name, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = _example(part, components, name, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        own = _example(rest, components, name, depth + 1) if rest.get("properties") else None
        return {**(own or {}), **merged}  # what the referenced schemas say is the stricter
    return _typed(schema, components, name, depth)


def _hinted(schema: dict[str, Any], name: str | None) -> bool:
    """Whether a value of ``schema`` named ``name`` can be shown as something real."""
    if name in NAME_EXAMPLES or (name or "").endswith("_at") or "$ref" in schema:
        return True
    return any(k in schema for k in ("example", "examples", "enum", "const", "pattern", "format"))


def _typed(schema: dict[str, Any], components: dict[str, Any], name: str | None, depth: int) -> Any:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    known = NAME_EXAMPLES.get(name or "")
    if kind in _CONTAINERS and isinstance(known, _CONTAINERS[kind]):
        return known
    if kind == "object" or "properties" in schema:
        return {
            prop: value
            for prop, sub in schema.get("properties", {}).items()
            if (value := _example(sub, components, prop, depth + 1)) is not None
            or prop in schema.get("required", ())
        }
    if kind == "array":
        item = _example(schema.get("items", {}), components, name, depth + 1)
        if item is None:
            return []
        count = max(1, schema.get("minItems", 1))
        return [f"{item} {i + 1}" if isinstance(item, str) and count > 1 else item for i in range(count)]
    if kind == "string":
        return _string(schema, name)
    if kind in ("integer", "number"):
        return _number(schema, name, kind)
    if kind == "boolean":
        return True
    return None


def _string(schema: dict[str, Any], name: str | None) -> str:
    pattern = schema.get("pattern")
    if pattern in PATTERN_EXAMPLES:
        return PATTERN_EXAMPLES[pattern]
    if pattern and "T[0-9]{2}:" in pattern:
        return TIMESTAMP
    if schema.get("format") in FORMAT_EXAMPLES:
        return FORMAT_EXAMPLES[schema["format"]]
    if name and name.endswith("_at"):
        return TIMESTAMP
    value = NAME_EXAMPLES.get(name or "")
    text = value if isinstance(value, str) else "string"
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    return text[:high] if high else text


def _number(schema: dict[str, Any], name: str | None, kind: str) -> int | float:
    value = NAME_EXAMPLES.get(name or "")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = 1
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is not None and value < low:
        value = low + (1 if "exclusiveMinimum" in schema else 0)
    if high is not None and value > high:
        value = high - (1 if "exclusiveMaximum" in schema else 0)
    return int(value) if kind == "integer" else value


def add_examples(document: dict[str, Any]) -> dict[str, Any]:
    """Every JSON request body and every JSON answer of ``document`` gets an ``example`` (when it
    has none yet: the error answers come with theirs)."""
    components = document["components"]["schemas"]
    for path_item in document["paths"].values():
        for operation in path_item.values():
            media = [operation.get("requestBody", {}).get("content", {}).get("application/json")]
            for response in operation.get("responses", {}).values():
                media.append(response.get("content", {}).get("application/json"))
            for item in media:
                if item and "schema" in item and "example" not in item:
                    item["example"] = example_for(item["schema"], components)
    return document
