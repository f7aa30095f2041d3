"""``/api/sandbox/...``: sandbox tenants play the phone's side of their scripted session: scan the QR,
receive a message from a contact (or a group member), send one from the phone itself (``outgoing``),
deliver/read acks, react to / edit / revoke a message, vote on a poll, members joining or leaving a
group, an incoming call, WhatsApp Web learning an @lid contact's number (``contact``), disconnect,
crash, hang, leak memory.

Statuses: 403 ``not_sandbox`` (the tenant is not a sandbox tenant), 409 ``session_not_ready`` (no
session runs), ``bridge_invalid_state`` (e.g. scan while no QR shows) or ``supervisor_disabled``,
422 bad arguments, 503 when the bridge does not answer or the server is shutting down.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import ConfigDict, Field, model_validator

from control_plane import errors
from control_plane.api.session import supervisor_of
from control_plane.http.models import RequestModel, ResponseModel, needs_one_of, with_examples
from control_plane.http.routing import Router

TAGS = ("sandbox",)
router = Router(tags=TAGS, auth="tenant")
ERRORS = (403, 409, 503)
ACK_CODES = {"error": -1, "pending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}


class SandboxResult(ResponseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool = True


class Media(RequestModel):
    """Inline (base64) or by URL. Server file paths are not accepted from the API."""

    model_config = ConfigDict(json_schema_extra=needs_one_of("base64", "url", exactly=True))
    mimetype: str = Field(min_length=3, max_length=200)
    filename: str | None = Field(default=None, max_length=255)
    base64: str | None = Field(default=None, max_length=8 * 1024 * 1024)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")

    @model_validator(mode="after")
    def _one_source(self) -> Media:
        if (self.base64 is None) == (self.url is None):
            raise ValueError("media needs exactly one of base64, url")
        return self


class Location(RequestModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    description: str | None = Field(default=None, max_length=500)


class Command(RequestModel):
    """A sandbox command's body; ``bridge_args()`` is what the scripted driver is sent."""

    def bridge_args(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


MessageType = Literal[
    "chat", "text", "image", "document", "audio", "ptt", "video", "sticker", "location", "poll_creation"
]
# A contact or group member: digits, or ``<digits>@c.us``, or an ``<n>@lid`` user.
Member = Annotated[str, Field(min_length=5, max_length=64, pattern=r"^\+?[0-9][0-9 ()+-]*(@(c\.us|lid))?$")]


class SandboxPoll(RequestModel):
    name: str = Field(min_length=1, max_length=255)
    options: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=2, max_length=12)


CONTENT = ("text", "media", "location", "poll")


class Incoming(Command):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra=with_examples(
            needs_one_of(*CONTENT), {"from": "+15557654321", "text": "Hi! Is my order on its way?"}
        ),
    )
    from_: str = Field(
        alias="from",
        min_length=5,
        max_length=64,
        description="Digits or a chat id (…@c.us, a group …@g.us, an …@lid user, status@broadcast)",
    )
    author: Member | None = Field(
        default=None, description="In a group (or on status@broadcast): the member who wrote it"
    )
    text: str | None = Field(default=None, min_length=1, max_length=65536)
    type: MessageType | None = None
    media: Media | None = None
    location: Location | None = None
    poll: SandboxPoll | None = None
    quoted_id: str | None = Field(default=None, max_length=200)
    notify_name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _has_content(self) -> Incoming:
        if self.text is None and self.media is None and self.location is None and self.poll is None:
            raise ValueError("give text, media, location or poll")
        return self


class Outgoing(Command):
    model_config = ConfigDict(
        json_schema_extra=with_examples(
            needs_one_of(*CONTENT), {"to": "+15557654321", "text": "Typed on the phone itself"}
        )
    )
    to: str = Field(min_length=5, max_length=64, description="Digits or a chat id (…@c.us, a group …@g.us)")
    text: str | None = Field(default=None, min_length=1, max_length=65536)
    type: MessageType | None = None
    media: Media | None = None
    location: Location | None = None
    poll: SandboxPoll | None = None
    quoted_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _has_content(self) -> Outgoing:
        if self.text is None and self.media is None and self.location is None and self.poll is None:
            raise ValueError("give text, media, location or poll")
        return self


class SandboxChange(Command):
    """Who changes which message: ``from`` (a contact or group member; default: the contact of the
    message's chat), or the phone itself with ``from_me``."""

    model_config = ConfigDict(populate_by_name=True)
    target: str = Field(
        min_length=10, max_length=200, description="The message's id (from incoming/outgoing)"
    )
    from_: Member | None = Field(default=None, alias="from")
    from_me: bool = False


class SandboxReaction(SandboxChange):
    emoji: str = Field(max_length=16, description='The emoji ("" removes the reaction)')


class SandboxEdit(SandboxChange):
    body: str = Field(min_length=1, max_length=65536, description="The new text")


class SandboxVote(SandboxChange):
    options: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        max_length=12, description="The voter's whole current choice (names); [] withdraws the vote"
    )


class SandboxGroupChange(Command):
    group: str = Field(min_length=8, max_length=64, pattern=r"^[0-9][0-9-]*@g\.us$")
    members: list[Member] = Field(min_length=1, max_length=256)
    by: Member | None = Field(default=None, description="The admin who added or removed them")
    type: Literal["add", "invite", "linked_group_join", "remove", "leave"] | None = None


class SandboxCall(Command):
    model_config = ConfigDict(populate_by_name=True)
    from_: Member = Field(alias="from")
    video: bool = False
    group: bool = False


class SandboxContact(Command):
    lid: str = Field(min_length=5, max_length=30, pattern=r"^[0-9]{1,24}@lid$")
    phone: str = Field(min_length=5, max_length=32, pattern=r"^\+?[0-9][0-9 ()+-]*$")


class Ack(Command):
    model_config = ConfigDict(
        json_schema_extra=with_examples(
            needs_one_of("ack", "status", exactly=True),
            {"id": "true_15557654321@c.us_3EB0C767D097B7", "status": "read"},
        )
    )
    id: str = Field(min_length=1, max_length=200, description="Message id from a send or an incoming message")
    ack: int | None = Field(
        default=None, ge=-1, le=4, description="-1 error, 0 pending, 1 sent, 2 delivered, 3 read, 4 played"
    )
    status: Literal["error", "pending", "sent", "delivered", "read", "played"] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Ack:
        if (self.ack is None) == (self.status is None):
            raise ValueError("give exactly one of ack, status")
        return self

    def bridge_args(self) -> dict[str, Any]:
        return {"id": self.id, "ack": self.ack if self.ack is not None else ACK_CODES[self.status or "sent"]}


class Disconnect(Command):
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_ -]+$",
        description="WhatsApp's reason (default NAVIGATION)",
    )


class Crash(Command):
    exit_code: int | None = Field(
        default=None, ge=1, le=255, description="Exit with this code; default SIGKILL"
    )


class Leak(Command):
    mb: float = Field(gt=0, le=4096, description="Megabytes the bridge allocates and keeps")


async def _sandbox(request: web.Request, cmd: str, args: dict[str, Any] | None = None) -> SandboxResult:
    tenant = request["tenant"]
    if not tenant.get("sandbox"):
        raise errors.Forbidden(
            "sandbox endpoints are for sandbox tenants only (created with sandbox: true)", code="not_sandbox"
        )
    result = await supervisor_of(request).sandbox(tenant["id"], cmd, args or {})
    return SandboxResult(**result)


# Every sandbox route: POST, the same answer and errors.
_route = functools.partial(router.route, "POST", response=SandboxResult, errors=ERRORS)


def _command(cmd: str, summary: str, body: type[Command] | None = None, *, name: str = "") -> None:
    """Declare ``POST /api/sandbox/<cmd>``: the scripted driver's ``<cmd>`` with the body's
    ``bridge_args()``. ``name`` (default ``cmd``) names the operation (its OpenAPI operationId)."""

    async def handler(request: web.Request, body: Command | None = None) -> SandboxResult:
        return await _sandbox(request, cmd, body.bridge_args() if body is not None else None)

    handler.__name__ = handler.__qualname__ = name or cmd
    _route(f"/api/sandbox/{cmd}", body=body, summary=summary)(handler)


_command("scan", "Scan the QR code showing now (the session then becomes authenticated, then ready)")
_command("incoming", "A contact sends a message to this session (returns its id)", Incoming)
_command(
    "outgoing",
    "Someone types a message to a contact on the phone itself (returns its id); it is reported as "
    "message.sent with origin phone",
    Outgoing,
)
_command("ack", "Delivery/read ack for a message (by number or name)", Ack)
_command(
    "disconnect", "WhatsApp drops the connection (body may be {}); the supervisor restarts it", Disconnect
)
_command(
    "logout",
    "The phone unlinks this device: the profile is wiped and a new QR appears",
    name="phone_logout",
)
_command("crash", "The bridge dies at once (body may be {}); the supervisor restarts it", Crash)
_command("hang", "The bridge stops answering and heartbeating; the watchdog kills and restarts it")
_command("leak", "The bridge allocates memory it never frees; past MEMORY_LIMIT_MB it is restarted", Leak)
_command("reaction", 'Someone reacts to a message (emoji "" removes the reaction)', SandboxReaction)
_command("edit", "A message is edited by whoever wrote it", SandboxEdit)
_command("revoke", "A message is deleted for everyone", SandboxChange)
_command("vote", "Someone votes on a poll (published as poll.vote)", SandboxVote)
_command(
    "group_join",
    "Members join a group (added, invited, via a community); published as group.join",
    SandboxGroupChange,
)
_command(
    "group_leave", "Members leave a group (removed, or left); published as group.leave", SandboxGroupChange
)
_command("call", "Someone calls this number (published as call.incoming)", SandboxCall)
_command(
    "contact",
    "WhatsApp Web learns the phone number of an @lid user: its later messages and events name that number",
    SandboxContact,
)
