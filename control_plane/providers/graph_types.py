"""The Cloud API client's value types: a tenant's credentials and what calls answer.

Pure module (standard library only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_API_VERSION = "v23.0"


@dataclass(frozen=True)
class CloudCredentials:
    """One tenant's Business API number. The token never appears in repr."""

    phone_number_id: str
    waba_id: str
    access_token: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION

    @property
    def version(self) -> str:
        v = self.api_version.strip("/")
        return v if v.startswith("v") else f"v{v}"


@dataclass(frozen=True, slots=True)
class SendResult:
    wamid: str
    wa_id: str | None  # canonical contact id; may differ from the input (store this one)
    message_status: str | None = (
        None  # only on template sends: accepted | held_for_quality_assessment | paused
    )


@dataclass(frozen=True, slots=True)
class MediaInfo:
    id: str
    url: str
    mime_type: str
    sha256: str
    file_size: int


@dataclass(frozen=True, slots=True)
class PhoneNumberInfo:
    id: str
    display_phone_number: str
    verified_name: str | None
    quality_rating: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    id: str
    name: str
    language: str
    status: str
    category: str | None
    components: list[dict[str, Any]]
