"""The send protocol every road implements: ``await provider.send(message) -> Outcome``.

Pure module (standard library only). The dispatcher (messaging) claims, routes, paces and records;
a provider only turns one stored, provider-neutral message into its road's request and says what
became of it::

    Outcome
    ├── Sent        the provider accepted it: .provider_message_id (+ .canonical_wa_id when the
    │               provider answered with another id for the contact than the one we sent to)
    ├── Retryable   not sent; may be tried again: .code .message .retry_after_s (the least wait);
    │               .not_ready: the road itself is down (nothing was sent; another road may take it)
    ├── Failed      not sent and never will be as it stands: .code .message
    └── Unknown     the provider may or may not have it (timeout, no answer): never blindly retried

Implementations: ``providers.web.WebProvider`` (the tenant's Web session, through its bridge) and
``providers.cloud.CloudProvider`` (the Cloud API, through ``CloudAPIClient``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from control_plane.providers.graph_types import CloudCredentials

WEB = "web"
CLOUD = "business_api"
MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})

# (tenant_id, reference, provider) -> the provider's own message id. ``reply_to`` and a reaction's
# ``message_id`` may name one of our message ids; the provider wants its own.
ResolveReference = Callable[[str, str, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One stored message as a provider sees it. ``content`` is the stored, provider-neutral shape
    (``messaging/models.py``); ``context.id`` in it names the message replied to."""

    tenant_id: str
    message_id: str  # ours: also the Cloud API's biz_opaque_callback_data
    wa_id: str
    kind: str
    content: Mapping[str, Any]
    # Cloud API outside the 24 h window: send the tenant's fallback template {name, language,
    # body_param} instead of the message itself.
    fallback_template: Mapping[str, Any] | None = None
    creds: CloudCredentials | None = None  # the tenant's Business API number (Cloud only)
    # Called by the provider just before the request leaves (the dispatcher's send journal).
    on_wire: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    provider_message_id: str
    canonical_wa_id: str | None = None


@dataclass(frozen=True, slots=True)
class Retryable:
    code: str
    message: str
    retry_after_s: float = 0.0
    not_ready: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Unknown:
    message: str


Outcome = Sent | Retryable | Failed | Unknown


@runtime_checkable
class Provider(Protocol):
    """A road that carries messages."""

    name: str

    async def send(self, message: OutboundMessage) -> Outcome: ...
