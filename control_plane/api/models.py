"""Shared pieces of the request/response models."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer


def _iso_utc(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


UTCDateTime = Annotated[dt.datetime, PlainSerializer(_iso_utc, return_type=str, when_used="json")]


class RequestModel(BaseModel):
    """Bodies and queries: unknown fields are an error, types are not coerced (a string is no number)."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)


class QueryModel(BaseModel):
    """Query strings arrive as text: coercion is allowed, unknown parameters are not."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Ok(ResponseModel):
    ok: bool = True
