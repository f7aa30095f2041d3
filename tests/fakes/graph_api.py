"""A faithful fake of Meta's Graph API (WhatsApp Cloud API) and a Meta-shaped webhook sender.

Follows Meta's Cloud API reference (shapes, errors, limits, signed webhooks). A real aiohttp server
on 127.0.0.1, port 0::

    async with FakeGraphAPI() as fake:
        fake.add_number("106540352242922", "102290129340398", "TOKEN", display_phone_number="15550783881")
        fake.open_window("106540352242922", "16505551234")
        ...  # point the client at fake.url
        assert fake.sent_count(to="16505551234") == 1

Routes (any ``/vNN.N/`` prefix): POST /{pnid}/messages, GET /{pnid}, POST /{pnid}/media,
GET|DELETE /{media_id}, GET /_fake/media/{media_id} (authenticated download), GET /{waba_id},
GET|POST|DELETE /{waba_id}/message_templates. Control (no auth): GET /_fake/stats,
POST /_fake/numbers, POST /_fake/windows, for a fake run in its own process with
``python -m tests.fakes.graph_api [--port N] [--no-window]`` (prints ``FAKE_GRAPH_API_URL=...``).

Users known by a business-scoped user id (BSUID, ``US.13491208655302741918``; Meta's username
rollout): a send names them with ``recipient`` instead of ``to`` (``to`` wins when both are given),
the answer's contact has ``user_id`` instead of ``wa_id``, their window is kept by BSUID, and an
authentication template to a BSUID is refused with 131062. ``as_user(message, bsuid, phone=False)``
makes an inbound message come from such a user (``from_user_id``, no ``from``); ``status`` to a BSUID
carries ``recipient_user_id`` only.

Webhooks: pure builders (``text_message``, ``status``, ``change_value``, ``entry``, ``envelope``,
``batch`` ...), ``serialize`` (Meta's ASCII-escaped compact JSON), ``sign`` and ``deliver``; or
``fake.webhooks(target_url, app_secret)`` for a sender that knows the fake's numbers and sent
messages (and opens the 24 h window when it delivers an inbound message).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

WINDOW_S = 24 * 3600
_VERSION = r"{version:v\d+(?:\.\d+)?}"

# code -> (message title, type, default HTTP status)
ERRORS: dict[int, tuple[str, str, int]] = {
    0: ("AuthException", "OAuthException", 401),
    1: ("An unknown error occurred", "OAuthException", 500),
    2: ("Service temporarily unavailable", "OAuthException", 503),
    4: ("Application request limit reached", "OAuthException", 400),
    10: ("Permission denied", "OAuthException", 403),
    100: ("Invalid parameter", "OAuthException", 400),
    190: ("Invalid OAuth access token - Cannot parse access token", "OAuthException", 401),
    200: ("Permissions error", "OAuthException", 403),
    368: ("Temporarily blocked for policies violations", "OAuthException", 400),
    80007: ("Rate limit issues", "OAuthException", 400),
    130429: ("Rate limit hit", "OAuthException", 400),
    131000: ("Something went wrong", "OAuthException", 500),
    131008: ("Required parameter is missing", "OAuthException", 400),
    131009: ("Parameter value is not valid", "OAuthException", 400),
    131016: ("Service unavailable", "OAuthException", 503),
    131026: ("Message undeliverable", "OAuthException", 400),
    131047: ("Re-engagement message", "OAuthException", 400),
    131048: ("Spam rate limit hit", "OAuthException", 400),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "OAuthException",
        400,
    ),
    131051: ("Unsupported message type", "OAuthException", 400),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", "OAuthException", 400),
    131057: ("Account in maintenance mode", "OAuthException", 400),
    132000: ("Number of parameters does not match the expected number of params", "OAuthException", 400),
    132001: ("Template name does not exist in the translation", "OAuthException", 404),
    132005: ("Translated text too long", "OAuthException", 400),
    132007: ("Template format character policy violated", "OAuthException", 400),
    132012: ("Parameter format does not match format in the created template", "OAuthException", 400),
    132015: ("Template is paused", "OAuthException", 400),
    132016: ("Template is disabled", "OAuthException", 400),
    133010: ("Account not registered", "OAuthException", 400),
}
WINDOW_DETAILS = (
    "Message failed to send because more than 24 hours have passed since the customer "
    "last replied to this number."
)
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
_PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


class GraphFault(Exception):
    """Raised inside the fake's handlers; turned into the Graph error envelope."""

    def __init__(
        self,
        code: int,
        details: str = "",
        *,
        http_status: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(code, details)
        self.code, self.details, self.subcode = code, details, subcode
        title, self.type, default_status = ERRORS.get(code, ("Unknown error", "OAuthException", 400))
        self.http_status = http_status or default_status
        self.message = message or f"(#{code}) {title}"


def error_envelope(
    code: int, message: str, *, type_: str = "OAuthException", subcode: int | None = None, details: str = ""
) -> dict[str, Any]:
    """The Graph error body exactly as cloud-api.md §5 shows it."""
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["error_data"] = {"messaging_product": "whatsapp", "details": details or message}
    error["fbtrace_id"] = secrets.token_urlsafe(17)[:23]
    return {"error": error}


@dataclass
class _Number:
    phone_number_id: str
    waba_id: str
    token: str
    display_phone_number: str
    verified_name: str
    quality_rating: str = "GREEN"


@dataclass
class _Template:
    id: str
    name: str
    language: str
    status: str
    category: str
    components: list[dict[str, Any]]
    param_counts: dict[str, int] | None  # component type (lower) -> expected parameters; None = unchecked

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "components": self.components,
            "id": self.id,
        }


@dataclass
class _Media:
    id: str
    data: bytes
    mime_type: str
    filename: str
    phone_number_id: str
    sha256: str


@dataclass
class _Injection:
    code: int | None
    http_status: int
    remaining: int | None
    pnid: str | None
    to: str | None
    endpoint: str | None
    subcode: int | None
    details: str
    retry_after: str | None


@dataclass
class _Delay:
    seconds: float
    remaining: int | None
    endpoint: str | None


def _digits(value: str) -> str:
    return value[1:] if value.startswith("+") else value


_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}\Z")


def is_bsuid(value: Any) -> bool:
    """Meta's business-scoped user id: a country code, a dot, (ENT. for a parent one,) <= 128 alnum."""
    return isinstance(value, str) and _BSUID.match(value) is not None


def _new_wamid() -> str:
    return "wamid." + base64.b64encode(secrets.token_bytes(24)).decode().rstrip("=")


class FakeGraphAPI:
    """The fake Graph API server and its state. See the module docstring."""

    def __init__(
        self,
        *,
        enforce_window: bool = True,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        accept_any_credentials: bool = False,
    ) -> None:
        self.enforce_window = enforce_window
        # Every token is valid and owns the number (or WABA) a call names, made up on first use (for a
        # fuzzer, whose tokens and ids are drawn at random).
        self.accept_any_credentials = accept_any_credentials
        self.clock = clock
        self.host = host
        self.numbers: dict[str, _Number] = {}
        self.extra_tokens: set[str] = set()
        self._token_numbers: dict[str, set[str]] = {}
        self.expired_tokens: set[str] = set()
        self.templates: dict[str, dict[tuple[str, str], _Template]] = {}  # waba -> (name, lang) -> template
        self.windows: dict[tuple[str, str], float] = {}  # (pnid, wa_id) -> last inbound at
        self.wa_id_map: dict[str, str] = {}  # input digits -> canonical wa_id (Brazil's 9th digit)
        self.media: dict[str, _Media] = {}
        self.sent: list[dict[str, Any]] = []
        self.read_marks: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answer
        self.sent_by_wamid: dict[str, dict[str, Any]] = {}
        self._injections: list[_Injection] = []
        self._delays: list[_Delay] = []
        self._rate_limits: dict[str, int] = {}
        self._rate_windows: dict[str, deque[float]] = {}
        self.throttled: dict[str, int] = {}  # pnid -> 130429 answers for going over its rate limit
        self._pair_intervals: dict[str, float] = {}
        self._pair_last: dict[tuple[str, str], float] = {}
        self._ids = iter(range(10**15 + 1, 10**16))
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._senders: list[WebhookSender] = []
        self.url = ""
        self.port = 0
        self._bind_port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> FakeGraphAPI:
        app = web.Application(client_max_size=120 * 1024 * 1024)
        app.router.add_get("/_fake/media/{media_id}", self._download)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/numbers", self._control_number)
        app.router.add_post("/_fake/windows", self._control_window)
        v = _VERSION
        app.router.add_post(f"/{v}/{{pnid}}/messages", self._wrap("messages", self._messages))
        app.router.add_post(f"/{v}/{{pnid}}/media", self._wrap("media", self._upload))
        app.router.add_get(f"/{v}/{{waba}}/message_templates", self._wrap("templates", self._list_templates))
        app.router.add_post(
            f"/{v}/{{waba}}/message_templates", self._wrap("templates", self._create_template)
        )
        app.router.add_delete(
            f"/{v}/{{waba}}/message_templates", self._wrap("templates", self._delete_template)
        )
        app.router.add_get(f"/{v}/{{node}}", self._wrap("node", self._get_node))
        app.router.add_delete(f"/{v}/{{node}}", self._wrap("node", self._delete_node))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._bind_port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def close(self) -> None:
        self._closing.set()  # releases every delayed answer at once
        for sender in self._senders:
            await sender.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGraphAPI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state set-up ----------------------------------------------------------------------------

    def add_number(
        self,
        phone_number_id: str,
        waba_id: str,
        token: str,
        *,
        display_phone_number: str = "15550783881",
        verified_name: str = "Test Business",
        quality_rating: str = "GREEN",
    ) -> None:
        for owned in self._token_numbers.values():  # re-registering a number replaces its token
            owned.discard(phone_number_id)
        self._token_numbers.setdefault(token, set()).add(phone_number_id)
        self.numbers[phone_number_id] = _Number(
            phone_number_id, waba_id, token, display_phone_number, verified_name, quality_rating
        )
        self.templates.setdefault(waba_id, {})

    def add_token(self, token: str) -> None:
        """A valid token that owns no number (calls on numbers answer 100/33)."""
        self.extra_tokens.add(token)

    def expire_token(self, token: str) -> None:
        """Make a token answer 190 with subcode 463 (expired)."""
        self.expired_tokens.add(token)

    def set_wa_id(self, input_number: str, wa_id: str) -> None:
        """Answer ``wa_id`` for sends to ``input_number`` (the canonical id differs from the input)."""
        self.wa_id_map[_digits(input_number)] = wa_id

    def add_template(
        self,
        waba_id: str,
        name: str,
        language: str = "en_US",
        *,
        status: str = "APPROVED",
        category: str = "UTILITY",
        components: list[dict[str, Any]] | None = None,
        body_params: int | None = None,
        header_params: int | None = None,
    ) -> str:
        """Register a template. Parameter counts come from ``{{n}}`` in the components' text, or from
        ``body_params``/``header_params``; with neither, counts are not checked."""
        components = components or []
        counts = _count_params(components)
        if body_params is not None or header_params is not None:
            counts = counts or {}
            if body_params is not None:
                counts["body"] = body_params
            if header_params is not None:
                counts["header"] = header_params
        template_id = str(next(self._ids))
        self.templates.setdefault(waba_id, {})[(name, language)] = _Template(
            template_id, name, language, status, category, components, counts
        )
        return template_id

    def add_media(
        self, phone_number_id: str, data: bytes, mime_type: str = "image/jpeg", filename: str = ""
    ) -> str:
        """Store media as if uploaded (or received in a webhook); returns its media id."""
        media_id = str(next(self._ids))
        self.media[media_id] = _Media(
            media_id, data, mime_type, filename, phone_number_id, hashlib.sha256(data).hexdigest()
        )
        return media_id

    def set_template_status(self, waba_id: str, name: str, status: str, language: str | None = None) -> None:
        for (tname, tlang), template in self.templates.get(waba_id, {}).items():
            if tname == name and (language is None or tlang == language):
                template.status = status

    def open_window(self, phone_number_id: str, wa_id: str, at: float | None = None) -> None:
        """The user ``wa_id`` wrote to ``phone_number_id`` at ``at`` (default now)."""
        self.windows[(phone_number_id, _digits(wa_id))] = self.clock() if at is None else at

    def opened_by(self, phone_number_id: str, messages: Iterable[Mapping[str, Any]]) -> None:
        """Inbound ``messages`` were delivered: each sender's window opens (by phone number and BSUID)."""
        for message in messages:
            for sender in (message.get("from"), message.get("from_user_id")):
                if sender:
                    self.open_window(phone_number_id, sender, at=float(message["timestamp"]))

    def close_window(self, phone_number_id: str, wa_id: str) -> None:
        self.windows.pop((phone_number_id, _digits(wa_id)), None)

    def window_open(self, phone_number_id: str, wa_id: str) -> bool:
        at = self.windows.get((phone_number_id, _digits(wa_id)))
        return at is not None and self.clock() - at < WINDOW_S

    def inject_error(
        self,
        code: int | None,
        *,
        http_status: int | None = None,
        times: int | None = 1,
        pnid: str | None = None,
        to: str | None = None,
        endpoint: str | None = "messages",
        subcode: int | None = None,
        details: str = "",
        retry_after: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching calls (None: until cleared) with error ``code``.

        ``code=None`` answers a bare HTTP error without a Graph envelope (a proxy's 502).
        ``endpoint``: "messages" (default), "media", "templates", "node", or None for any call."""
        status = http_status or (ERRORS[code][2] if code in ERRORS else 400 if code is not None else 502)
        self._injections.append(
            _Injection(
                code,
                status,
                times,
                pnid,
                _digits(to) if to else None,
                endpoint,
                subcode,
                details,
                retry_after,
            )
        )

    def clear_errors(self) -> None:
        self._injections.clear()

    def set_delay(self, seconds: float, times: int | None = None, *, endpoint: str | None = None) -> None:
        """Answer the next ``times`` calls (None: all) ``seconds`` late; ``seconds=0`` clears."""
        self._delays = [] if seconds <= 0 else [_Delay(seconds, times, endpoint)]

    def set_rate_limit(self, phone_number_id: str, per_second: int | None) -> None:
        """Answer 130429 when a number would exceed ``per_second`` accepted sends in any 1 s window."""
        if per_second is None:
            self._rate_limits.pop(phone_number_id, None)
        else:
            self._rate_limits[phone_number_id] = per_second

    def set_pair_limit(self, phone_number_id: str, min_interval_s: float | None) -> None:
        """Answer 131056 when the same recipient gets two sends within ``min_interval_s``."""
        if min_interval_s is None:
            self._pair_intervals.pop(phone_number_id, None)
        else:
            self._pair_intervals[phone_number_id] = min_interval_s

    # -- inspection ------------------------------------------------------------------------------

    def sent_count(self, to: str | None = None, pnid: str | None = None) -> int:
        return len(self.sent_to(to, pnid))

    def sent_to(self, to: str | None = None, pnid: str | None = None) -> list[dict[str, Any]]:
        wa_id = self.wa_id_map.get(_digits(to), _digits(to)) if to else None
        return [
            s
            for s in self.sent
            if (wa_id is None or s["to"] == wa_id) and (pnid is None or s["pnid"] == pnid)
        ]

    def max_per_second(self, pnid: str, *, sliding: bool = True) -> int:
        """Most sends accepted for ``pnid`` in any 1 s window (``sliding=False``: calendar seconds)."""
        times = sorted(s["at"] for s in self.sent if s["pnid"] == pnid)
        if not sliding:
            buckets: dict[int, int] = {}
            for t in times:
                buckets[int(t)] = buckets.get(int(t), 0) + 1
            return max(buckets.values(), default=0)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def stats(self) -> dict[str, Any]:
        """Totals per number, and sends sharing a ``biz_opaque_callback_data`` (duplicates). Per
        number: sends, the most in any sliding 1 s window, 130429s for its rate limit, and the
        accept times (unix seconds) of the sends in order."""
        per: dict[str, list[float]] = {}
        seen: dict[str, int] = {}
        for record in self.sent:
            per.setdefault(record["pnid"], []).append(record["at"])
            key = record.get("biz_opaque_callback_data")
            if key is not None:
                seen[key] = seen.get(key, 0) + 1
        return {
            "sent": len(self.sent),
            "duplicates": sum(n - 1 for n in seen.values() if n > 1),
            "numbers": {
                p: {
                    "sent": len(times),
                    "max_per_second": self.max_per_second(p),
                    "throttled": self.throttled.get(p, 0),
                    "times": sorted(times),
                }
                for p, times in per.items()
            },
        }

    def webhooks(self, target_url: str, app_secret: str) -> WebhookSender:
        """A webhook sender bound to this fake (closed with it)."""
        sender = WebhookSender(target_url, app_secret, fake=self)
        self._senders.append(sender)
        return sender

    # -- control routes: drive a fake running in another process (python -m tests.fakes.graph_api) --

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control_number(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.add_number(
            body["phone_number_id"],
            body["waba_id"],
            body["token"],
            display_phone_number=body.get("display_phone_number", "15550783881"),
        )
        if body.get("rate_limit") is not None:
            self.set_rate_limit(body["phone_number_id"], int(body["rate_limit"]))
        return web.json_response({"ok": True}, status=201)

    async def _control_window(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.open_window(body["phone_number_id"], body["wa_id"], at=body.get("at"))
        return web.json_response({"ok": True}, status=201)

    # -- request plumbing ------------------------------------------------------------------------

    def _wrap(self, endpoint: str, handler: Callable[..., Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                await self._maybe_delay(endpoint)
                number = self._authenticate(request)
                response = await handler(request, number, endpoint)
            except GraphFault as fault:
                response = web.json_response(
                    error_envelope(
                        fault.code,
                        fault.message,
                        type_=fault.type,
                        subcode=fault.subcode,
                        details=fault.details,
                    ),
                    status=fault.http_status,
                )
            except _Bare as bare:
                response = web.Response(status=bare.status, text=bare.text, headers=bare.headers)
            self.requests.append((request.method, request.path, response.status))
            return response

        return wrapped

    async def _maybe_delay(self, endpoint: str) -> None:
        for delay in self._delays:
            if delay.endpoint not in (None, endpoint):
                continue
            if delay.remaining is not None:
                if delay.remaining <= 0:
                    continue
                delay.remaining -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay.seconds)
            return

    def _authenticate(self, request: web.Request) -> set[str]:
        """Check the Bearer token; return the phone_number_ids it owns."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token", "")
        if not token:
            raise GraphFault(
                190,
                "An active access token must be used to query information about the current user.",
                message="(#190) An active access token must be used",
            )
        if token in self.expired_tokens:
            raise GraphFault(
                190,
                "Session has expired",
                subcode=463,
                message="(#190) Error validating access token: Session has expired",
            )
        owned = self._token_numbers.get(token, set())
        if self.accept_any_credentials:
            return self._any_credentials(token, request)
        if not owned and token not in self.extra_tokens:
            raise GraphFault(190, "Invalid OAuth access token - Cannot parse access token", subcode=467)
        return owned

    def _any_credentials(self, token: str, request: web.Request) -> set[str]:
        node = next((request.match_info[k] for k in ("pnid", "node", "waba") if k in request.match_info), "")
        if node and node not in self.numbers:
            self.add_number(node, node, token)  # a made-up number is its own WABA
        return {*self._token_numbers.get(token, set()), *([node] if node else [])}

    def _number(self, pnid: str, owned: set[str]) -> _Number:
        if pnid not in self.numbers or pnid not in owned:
            raise GraphFault(
                100,
                f"Unsupported request. Object with ID '{pnid}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        return self.numbers[pnid]

    def _waba(self, waba: str, owned: set[str]) -> str:
        if not any(self.numbers[p].waba_id == waba for p in owned):
            raise GraphFault(
                100,
                f"Unsupported request. Object with ID '{waba}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        return waba

    def _maybe_inject(self, endpoint: str, pnid: str | None, to: str | None) -> None:
        for inj in self._injections:
            if (
                inj.endpoint not in (None, endpoint)
                or (inj.pnid and inj.pnid != pnid)
                or (inj.to and inj.to != to)
            ):
                continue
            if inj.remaining is not None:
                if inj.remaining <= 0:
                    continue
                inj.remaining -= 1
            headers = {"Retry-After": inj.retry_after} if inj.retry_after else {}
            if inj.code is None:
                raise _Bare(inj.http_status, "<html><body>Bad Gateway</body></html>", headers)
            fault = GraphFault(inj.code, inj.details, http_status=inj.http_status, subcode=inj.subcode)
            raise _Bare(
                inj.http_status,
                json.dumps(
                    error_envelope(
                        fault.code,
                        fault.message,
                        type_=fault.type,
                        subcode=fault.subcode,
                        details=fault.details,
                    )
                ),
                {**headers, "Content-Type": "application/json"},
            )

    # -- /{pnid}/messages ------------------------------------------------------------------------

    async def _messages(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        number = self._number(request.match_info["pnid"], owned)
        try:
            body = await request.json()
        except ValueError:
            raise GraphFault(100, "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise GraphFault(100, "Request body must be a JSON object")
        to = _digits(str(body.get("to") or body.get("recipient") or ""))
        self._maybe_inject(endpoint, number.phone_number_id, to or None)
        if body.get("messaging_product") != "whatsapp":
            raise GraphFault(
                100,
                "The parameter messaging_product is required.",
                message="(#100) The parameter messaging_product is required.",
            )
        if body.get("status") == "read":
            return self._mark_read(number, body)
        return self._send(number, body)

    def _mark_read(self, number: _Number, body: dict[str, Any]) -> web.Response:
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise GraphFault(131008, "Param message_id is required")
        typing = body.get("typing_indicator")
        if typing is not None and typing != {"type": "text"}:
            raise GraphFault(131009, "typing_indicator.type must be 'text'")
        self.read_marks.append(
            {
                "pnid": number.phone_number_id,
                "message_id": message_id,
                "typing": typing is not None,
                "at": self.clock(),
            }
        )
        return web.json_response({"success": True})

    def _send(self, number: _Number, body: dict[str, Any]) -> web.Response:
        recipient_type = body.get("recipient_type", "individual")
        if recipient_type != "individual":
            raise GraphFault(131009, f"recipient_type '{recipient_type}' is not valid")
        raw_to, bsuid = self._recipient(body)
        kind = body.get("type", "text")
        part = body.get(kind)
        if kind == "contacts":  # the only type whose part is an array
            if (
                not isinstance(part, list)
                or not part
                or not all(isinstance(c, dict) and c.get("name") for c in part)
            ):
                raise GraphFault(100, "Param contacts must be a non-empty array of contacts with a name")
        elif kind not in _VALIDATORS:
            raise GraphFault(100, f"Param type '{kind}' is not a valid message type")
        elif not isinstance(part, dict):
            raise GraphFault(131008, f"The parameter {kind} is required.")
        else:
            _VALIDATORS[kind](part)
        _validate_context(body)
        wa_id = bsuid or self.wa_id_map.get(_digits(raw_to), _digits(raw_to))
        pnid = number.phone_number_id
        template: _Template | None = None
        if kind == "template":
            template = self._check_template(number, part)
            if bsuid and template.category == "AUTHENTICATION":
                raise GraphFault(
                    131062, "Business-scoped User ID recipients are not supported for this message."
                )
        elif self.enforce_window and not self.window_open(pnid, wa_id):
            raise GraphFault(131047, WINDOW_DETAILS)
        now = self.clock()
        self._check_rates(pnid, wa_id, now)
        wamid = _new_wamid()
        record = {
            "pnid": pnid,
            "to": wa_id,
            "input": raw_to,
            "type": kind,
            "payload": part,
            "body": body,
            "wamid": wamid,
            "at": now,
            "biz_opaque_callback_data": body.get("biz_opaque_callback_data"),
        }
        self.sent.append(record)
        self.sent_by_wamid[wamid] = record
        message: dict[str, Any] = {"id": wamid}
        if template is not None:
            message["message_status"] = "accepted"
        contact = {"input": raw_to, "user_id": wa_id} if bsuid else {"input": raw_to, "wa_id": wa_id}
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]}
        )

    @staticmethod
    def _recipient(body: dict[str, Any]) -> tuple[str, str | None]:
        """(the recipient as given, its BSUID when it is one): ``to`` (a phone number) wins over
        ``recipient`` (a BSUID or parent BSUID)."""
        raw_to, recipient = body.get("to"), body.get("recipient")
        if raw_to is None and recipient is not None:
            if not is_bsuid(recipient):
                raise GraphFault(100, f"Invalid parameter: recipient '{recipient}' is not a valid user id")
            return recipient, recipient
        if not isinstance(raw_to, str) or not raw_to:
            raise GraphFault(131008, "The parameter to is required.")
        digits = _digits(raw_to)
        if not digits.isdigit() or not 7 <= len(digits) <= 15:
            raise GraphFault(100, f"Invalid parameter: to '{raw_to}' is not a valid phone number")
        return raw_to, None

    def _check_template(self, number: _Number, part: dict[str, Any]) -> _Template:
        name = part.get("name")
        language = part.get("language")
        if not isinstance(name, str) or not name:
            raise GraphFault(131008, "Param template['name'] is required")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            raise GraphFault(131008, "Param template['language']['code'] is required")
        template = self.templates.get(number.waba_id, {}).get((name, language["code"]))
        if template is None:
            raise GraphFault(132001, f"template name ({name}) does not exist in {language['code']}")
        if template.status == "PAUSED":
            raise GraphFault(132015, f"Template {name} is paused")
        if template.status == "DISABLED":
            raise GraphFault(132016, f"Template {name} is disabled")
        if template.status != "APPROVED":
            raise GraphFault(
                132001,
                f"template name ({name}) does not exist in {language['code']} (status {template.status})",
            )
        components = part.get("components") or []
        if not isinstance(components, list):
            raise GraphFault(100, "Param template['components'] must be an array")
        if template.param_counts is not None:
            given: dict[str, int] = {}
            for comp in components:
                if isinstance(comp, dict) and comp.get("type") in ("header", "body"):
                    given[comp["type"]] = len(comp.get("parameters") or [])
            for comp_type, expected in template.param_counts.items():
                if given.get(comp_type, 0) != expected:
                    raise GraphFault(
                        132000,
                        f"{comp_type}: number of localizable_params "
                        f"({given.get(comp_type, 0)}) does not match the expected "
                        f"number of params ({expected})",
                    )
        for comp in components:
            for param in (comp.get("parameters") or []) if isinstance(comp, dict) else []:
                if (
                    isinstance(param, dict)
                    and param.get("type") == "text"
                    and len(str(param.get("text", ""))) > 1024
                ):
                    raise GraphFault(132005, "Translated text too long")
        return template

    def _check_rates(self, pnid: str, wa_id: str, now: float) -> None:
        limit = self._rate_limits.get(pnid)
        if limit is not None:
            window = self._rate_windows.setdefault(pnid, deque())
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= limit:
                self.throttled[pnid] = self.throttled.get(pnid, 0) + 1
                raise GraphFault(
                    130429, f"Message throughput of {limit}/s exceeded for this phone number", subcode=2494055
                )
            window.append(now)
        interval = self._pair_intervals.get(pnid)
        if interval is not None:
            last = self._pair_last.get((pnid, wa_id))
            if last is not None and now - last < interval:
                raise GraphFault(
                    131056,
                    "Message failed to send because there were too many messages sent "
                    "from this phone number to the same phone number in a short period.",
                )
            self._pair_last[(pnid, wa_id)] = now

    # -- media -----------------------------------------------------------------------------------

    async def _upload(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        number = self._number(request.match_info["pnid"], owned)
        self._maybe_inject(endpoint, number.phone_number_id, None)
        if not request.content_type.startswith("multipart/"):
            raise GraphFault(100, "Upload must be multipart/form-data")
        fields: dict[str, str] = {}
        data: bytes | None = None
        filename, file_type = "", ""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "file":
                data = await part.read()
                filename = part.filename or ""
                file_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE, "")
            elif part.name:
                fields[part.name] = await part.text()
        if fields.get("messaging_product") != "whatsapp":
            raise GraphFault(100, "The parameter messaging_product is required.")
        if data is None:
            raise GraphFault(131008, "The parameter file is required.")
        mime_type = fields.get("type") or file_type
        if not mime_type:
            raise GraphFault(131008, "The parameter type is required.")
        return web.json_response({"id": self.add_media(number.phone_number_id, data, mime_type, filename)})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        try:
            owned = self._authenticate(request)
            media = self.media.get(request.match_info["media_id"])
            if media is None or media.phone_number_id not in owned:
                raise _Bare(404, "Not Found")
        except GraphFault as fault:
            return web.json_response(
                error_envelope(fault.code, fault.message, subcode=fault.subcode, details=fault.details),
                status=fault.http_status,
            )
        except _Bare as bare:
            return web.Response(status=bare.status, text=bare.text)
        return web.Response(body=media.data, content_type=media.mime_type)

    async def _get_node(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        node = request.match_info["node"]
        self._maybe_inject(endpoint, node if node in self.numbers else None, None)
        if node in self.numbers:
            number = self._number(node, owned)
            return web.json_response(
                {
                    "verified_name": number.verified_name,
                    "code_verification_status": "VERIFIED",
                    "display_phone_number": number.display_phone_number,
                    "quality_rating": number.quality_rating,
                    "platform_type": "CLOUD_API",
                    "throughput": {"level": "STANDARD"},
                    "id": number.phone_number_id,
                }
            )
        media = self.media.get(node)
        if media is not None and media.phone_number_id in owned:
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{self.url}/_fake/media/{media.id}?ext={secrets.token_hex(4)}",
                    "mime_type": media.mime_type,
                    "sha256": media.sha256,
                    "file_size": len(media.data),
                    "id": media.id,
                }
            )
        if any(self.numbers[p].waba_id == node for p in owned):
            return web.json_response(
                {
                    "id": node,
                    "name": "Test WABA",
                    "currency": "USD",
                    "timezone_id": "1",
                    "message_template_namespace": f"ns_{node}",
                }
            )
        raise GraphFault(
            100,
            f"Unsupported get request. Object with ID '{node}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation.",
            subcode=33,
        )

    async def _delete_node(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        node = request.match_info["node"]
        self._maybe_inject(endpoint, None, None)
        media = self.media.get(node)
        if media is None or media.phone_number_id not in owned:
            raise GraphFault(
                100, f"Unsupported delete request. Object with ID '{node}' does not exist", subcode=33
            )
        del self.media[node]
        return web.json_response({"success": True})

    # -- templates -------------------------------------------------------------------------------

    async def _list_templates(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        waba = self._waba(request.match_info["waba"], owned)
        self._maybe_inject(endpoint, None, None)
        status = request.query.get("status")
        items = [
            t for t in self.templates.get(waba, {}).values() if status is None or t.status == status.upper()
        ]
        try:
            limit = max(1, min(int(request.query.get("limit", "25")), 1000))
            start = (
                int(base64.urlsafe_b64decode(request.query["after"]).decode())
                if "after" in request.query
                else 0
            )
        except (ValueError, UnicodeDecodeError):
            raise GraphFault(100, "Invalid limit or cursor") from None
        page = items[start : start + limit]
        cursors = {
            "before": base64.urlsafe_b64encode(str(start).encode()).decode(),
            "after": base64.urlsafe_b64encode(str(start + len(page)).encode()).decode(),
        }
        paging: dict[str, Any] = {"cursors": cursors}
        if start + limit < len(items):
            next_url = (
                request.url.with_host(self.host).with_port(self.port).update_query(after=cursors["after"])
            )
            paging["next"] = str(next_url)
        return web.json_response({"data": [t.public() for t in page], "paging": paging})

    async def _create_template(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        waba = self._waba(request.match_info["waba"], owned)
        self._maybe_inject(endpoint, None, None)
        try:
            body = await request.json()
        except ValueError:
            raise GraphFault(100, "Request body is not valid JSON") from None
        name, language, category = body.get("name"), body.get("language"), body.get("category")
        components = body.get("components")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,512}", name):
            raise GraphFault(100, "Param name must be lowercase letters, digits and underscores")
        if not isinstance(language, str) or not language:
            raise GraphFault(100, "Param language is required")
        if category not in ("MARKETING", "UTILITY", "AUTHENTICATION"):
            raise GraphFault(100, "Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}")
        if not isinstance(components, list) or not components:
            raise GraphFault(100, "Param components is required")
        if (name, language) in self.templates.get(waba, {}):
            raise GraphFault(
                100,
                f'Message template "{name}" already exists in {language}',
                subcode=2388024,
                message="(#100) Invalid parameter",
            )
        template_id = self.add_template(
            waba, name, language, status="PENDING", category=category, components=components
        )
        return web.json_response({"id": template_id, "status": "PENDING", "category": category})

    async def _delete_template(self, request: web.Request, owned: set[str], endpoint: str) -> web.Response:
        waba = self._waba(request.match_info["waba"], owned)
        name = request.query.get("name")
        keys = [k for k in self.templates.get(waba, {}) if k[0] == name]
        if not keys:
            raise GraphFault(100, f'Message template "{name}" not found')
        for key in keys:
            del self.templates[waba][key]
        return web.json_response({"success": True})


class _Bare(Exception):
    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.text, self.headers = status, text, dict(headers or {})


def _count_params(components: list[dict[str, Any]]) -> dict[str, int] | None:
    counts: dict[str, int] = {}
    for comp in components:
        comp_type = str(comp.get("type", "")).lower()
        if comp_type in ("header", "body") and isinstance(comp.get("text"), str):
            counts[comp_type] = len(_PLACEHOLDER.findall(comp["text"]))
    return counts or None


# -- per-type validation (cloud-api.md §2) -----------------------------------------------------


def _need_str(value: Any, what: str, max_len: int | None = None, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise GraphFault(131008, f"Param {what} is required")
    if max_len is not None and len(value) > max_len:
        raise GraphFault(100, f"Param {what} must be at most {max_len} characters long.")
    return value


def _validate_text(part: dict[str, Any]) -> None:
    _need_str(part.get("body"), "text['body']", 4096)
    if "preview_url" in part and not isinstance(part["preview_url"], bool):
        raise GraphFault(100, "Param text['preview_url'] must be a boolean")


def _media_validator(kind: str) -> Callable[[dict[str, Any]], None]:
    def validate(part: dict[str, Any]) -> None:
        has_id, has_link = "id" in part, "link" in part
        if has_id == has_link:
            raise GraphFault(100, f"Param {kind} must contain exactly one of 'id' or 'link'")
        if has_id:
            _need_str(part["id"], f"{kind}['id']")
        elif not re.match(r"https?://", _need_str(part["link"], f"{kind}['link']")):
            raise GraphFault(100, f"Param {kind}['link'] must be an http(s) URL")
        if "caption" in part:
            if kind not in ("image", "video", "document"):
                raise GraphFault(100, f"Param {kind}['caption'] is not allowed for {kind}")
            _need_str(part["caption"], f"{kind}['caption']", 1024, allow_empty=True)
        if "filename" in part and kind != "document":
            raise GraphFault(100, f"Param {kind}['filename'] is only allowed for documents")

    return validate


def _validate_location(part: dict[str, Any]) -> None:
    for key, bound in (("latitude", 90), ("longitude", 180)):
        value = part.get(key)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or abs(value) > bound:
            raise GraphFault(100, f"Param location['{key}'] must be a number within ±{bound}")


def _validate_reaction(part: dict[str, Any]) -> None:
    _need_str(part.get("message_id"), "reaction['message_id']")
    _need_str(part.get("emoji"), "reaction['emoji']", allow_empty=True)


def _validate_interactive(part: dict[str, Any]) -> None:
    kind = part.get("type")
    body = part.get("body")
    action = part.get("action")
    if kind not in (
        "button",
        "list",
        "cta_url",
        "product",
        "product_list",
        "flow",
        "location_request_message",
    ):
        raise GraphFault(100, f"Param interactive['type'] '{kind}' is not valid")
    if kind in ("button", "list", "cta_url"):
        if not isinstance(body, dict):
            raise GraphFault(131008, "Param interactive['body'] is required")
        _need_str(body.get("text"), "interactive['body']['text']", 1024)
    footer = part.get("footer")
    if isinstance(footer, dict):
        _need_str(footer.get("text"), "interactive['footer']['text']", 60)
    if not isinstance(action, dict):
        raise GraphFault(131008, "Param interactive['action'] is required")
    if kind == "button":
        _validate_buttons(action)
    elif kind == "list":
        _validate_list(action)


def _validate_buttons(action: dict[str, Any]) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise GraphFault(131009, "Param interactive['action']['buttons'] must have between 1 and 3 elements")
    ids = set()
    for i, button in enumerate(buttons):
        reply = button.get("reply") if isinstance(button, dict) and button.get("type") == "reply" else None
        if not isinstance(reply, dict):
            raise GraphFault(100, f"Param interactive['action']['buttons'][{i}] must be a reply button")
        ids.add(_need_str(reply.get("id"), f"buttons[{i}]['reply']['id']", 256))
        _need_str(reply.get("title"), f"buttons[{i}]['reply']['title']", 20)
    if len(ids) != len(buttons):
        raise GraphFault(131009, "Button ids must be unique")


def _validate_list(action: dict[str, Any]) -> None:
    _need_str(action.get("button"), "interactive['action']['button']", 20)
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise GraphFault(
            131009, "Param interactive['action']['sections'] must have between 1 and 10 elements"
        )
    ids: list[str] = []
    for s, section in enumerate(sections):
        rows = section.get("rows") if isinstance(section, dict) else None
        if not isinstance(rows, list) or not rows:
            raise GraphFault(131009, f"Param sections[{s}]['rows'] is required")
        if len(sections) > 1:
            _need_str(section.get("title"), f"sections[{s}]['title']", 24)
        for r, row in enumerate(rows):
            if not isinstance(row, dict):
                raise GraphFault(100, f"Param sections[{s}]['rows'][{r}] must be an object")
            ids.append(_need_str(row.get("id"), f"sections[{s}]['rows'][{r}]['id']", 200))
            _need_str(row.get("title"), f"sections[{s}]['rows'][{r}]['title']", 24)
            if "description" in row:
                _need_str(
                    row["description"], f"sections[{s}]['rows'][{r}]['description']", 72, allow_empty=True
                )
    if len(ids) > 10:
        raise GraphFault(131009, "Total row count exceed max allowed count: 10")
    if len(set(ids)) != len(ids):
        raise GraphFault(131009, "Row ids must be unique")


def _validate_template_shape(part: dict[str, Any]) -> None:
    pass  # existence, status and parameter counts are checked against the fake's templates


def _validate_context(body: dict[str, Any]) -> None:
    context = body.get("context")
    if context is not None and (
        not isinstance(context, dict) or not isinstance(context.get("message_id"), str)
    ):
        raise GraphFault(100, "Param context['message_id'] must be a string")
    opaque = body.get("biz_opaque_callback_data")
    if opaque is not None:
        _need_str(opaque, "biz_opaque_callback_data", 512, allow_empty=True)


_VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "text": _validate_text,
    "location": _validate_location,
    "reaction": _validate_reaction,
    "interactive": _validate_interactive,
    "template": _validate_template_shape,
    **{kind: _media_validator(kind) for kind in MEDIA_KINDS},
}


# ==============================================================================================
# Webhooks: pure payload builders, Meta's serialization, signing, delivery (cloud-api.md §7)
# ==============================================================================================

WEBHOOK_OBJECT = "whatsapp_business_account"
BAD_SIGNATURE = "sha256=" + "0" * 64


def _ts(timestamp: float | int | str | None) -> str:
    return str(int(time.time() if timestamp is None else float(timestamp)))


def _message(
    from_: str,
    kind: str,
    part: Any,
    *,
    wamid: str | None,
    timestamp: float | str | None,
    context: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "from": _digits(from_),
        "id": wamid or _new_wamid(),
        "timestamp": _ts(timestamp),
    }
    if context is not None:
        message["context"] = dict(context)
    message["type"] = kind
    if part is not None:
        message[kind] = part
    message.update(extra)
    return message


def text_message(
    from_: str,
    body: str,
    *,
    wamid: str | None = None,
    timestamp: float | str | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An inbound ``messages[]`` item of type text.

    ``context``: {from, id} for a reply or {forwarded: True}."""
    return _message(from_, "text", {"body": body}, wamid=wamid, timestamp=timestamp, context=context)


def media_message(
    from_: str,
    kind: str = "image",
    *,
    media_id: str | None = None,
    mime_type: str = "image/jpeg",
    sha256: str | None = None,
    caption: str | None = None,
    filename: str | None = None,
    wamid: str | None = None,
    timestamp: float | str | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    part: dict[str, Any] = {
        "mime_type": mime_type,
        "sha256": sha256 or secrets.token_hex(32),
        "id": media_id or str(secrets.randbelow(10**15) + 10**15),
    }
    if caption is not None:
        part["caption"] = caption
    if filename is not None:
        part["filename"] = filename
    return _message(from_, kind, part, wamid=wamid, timestamp=timestamp, context=context)


def image_message(from_: str, *, caption: str | None = None, **kw: Any) -> dict[str, Any]:
    return media_message(from_, "image", caption=caption, **kw)


def button_reply_message(
    from_: str,
    reply_id: str,
    title: str,
    *,
    context_id: str | None = None,
    wamid: str | None = None,
    timestamp: float | str | None = None,
    business_number: str = "15550783881",
) -> dict[str, Any]:
    part = {"type": "button_reply", "button_reply": {"id": reply_id, "title": title}}
    context = {"from": business_number, "id": context_id or _new_wamid()}
    return _message(from_, "interactive", part, wamid=wamid, timestamp=timestamp, context=context)


def list_reply_message(
    from_: str,
    row_id: str,
    title: str,
    description: str | None = None,
    *,
    context_id: str | None = None,
    wamid: str | None = None,
    timestamp: float | str | None = None,
    business_number: str = "15550783881",
) -> dict[str, Any]:
    reply: dict[str, Any] = {"id": row_id, "title": title}
    if description is not None:
        reply["description"] = description
    context = {"from": business_number, "id": context_id or _new_wamid()}
    return _message(
        from_,
        "interactive",
        {"type": "list_reply", "list_reply": reply},
        wamid=wamid,
        timestamp=timestamp,
        context=context,
    )


def button_message(
    from_: str,
    payload: str,
    text: str,
    *,
    context_id: str | None = None,
    wamid: str | None = None,
    timestamp: float | str | None = None,
    business_number: str = "15550783881",
) -> dict[str, Any]:
    """A template quick-reply button press (type ``button``)."""
    context = {"from": business_number, "id": context_id or _new_wamid()}
    return _message(
        from_, "button", {"payload": payload, "text": text}, wamid=wamid, timestamp=timestamp, context=context
    )


def reaction_message(
    from_: str, message_id: str, emoji: str, *, wamid: str | None = None, timestamp: float | str | None = None
) -> dict[str, Any]:
    """An inbound reaction; an empty ``emoji`` means the user removed it."""
    part: dict[str, Any] = {"message_id": message_id}
    if emoji:
        part["emoji"] = emoji
    return _message(from_, "reaction", part, wamid=wamid, timestamp=timestamp)


def location_message(
    from_: str,
    latitude: float,
    longitude: float,
    *,
    name: str | None = None,
    address: str | None = None,
    wamid: str | None = None,
    timestamp: float | str | None = None,
) -> dict[str, Any]:
    part: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name is not None:
        part["name"] = name
    if address is not None:
        part["address"] = address
    return _message(from_, "location", part, wamid=wamid, timestamp=timestamp)


def contacts_message(
    from_: str,
    contacts: Sequence[Mapping[str, Any]] | None = None,
    *,
    wamid: str | None = None,
    timestamp: float | str | None = None,
) -> dict[str, Any]:
    cards = (
        [dict(c) for c in contacts]
        if contacts
        else [
            {
                "name": {"formatted_name": "Ana Souza", "first_name": "Ana", "last_name": "Souza"},
                "phones": [{"phone": "+55 11 91234-5678", "wa_id": "5511912345678", "type": "CELL"}],
            }
        ]
    )
    return _message(from_, "contacts", cards, wamid=wamid, timestamp=timestamp)


def unsupported_message(
    from_: str, *, wamid: str | None = None, timestamp: float | str | None = None
) -> dict[str, Any]:
    errors = [
        {
            "code": 131051,
            "title": "Message type unknown",
            "message": "Message type unknown",
            "error_data": {"details": "Message type is currently not supported."},
        }
    ]
    return _message(from_, "unsupported", None, wamid=wamid, timestamp=timestamp, errors=errors)


def status(
    wamid: str,
    status_: str,
    recipient_id: str,
    *,
    timestamp: float | str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    biz_opaque_callback_data: str | None = None,
    pricing: bool = True,
    conversation_id: str | None = None,
) -> dict[str, Any]:
    """A ``statuses[]`` item: sent | delivered | read | failed | played. To a BSUID: its
    ``recipient_user_id`` and no ``recipient_id`` (the phone number)."""
    item: dict[str, Any] = {"id": wamid, "status": status_, "timestamp": _ts(timestamp)}
    if is_bsuid(recipient_id):
        item["recipient_user_id"] = recipient_id
    else:
        item["recipient_id"] = _digits(recipient_id)
    if biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = biz_opaque_callback_data
    if status_ in ("sent", "delivered") and pricing:
        item["conversation"] = {"id": conversation_id or secrets.token_hex(16), "origin": {"type": "service"}}
        item["pricing"] = {
            "billable": False,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
    if status_ == "failed":
        item["errors"] = [dict(e) for e in errors] if errors else [failed_error(131047)]
    elif errors:
        item["errors"] = [dict(e) for e in errors]
    return item


def failed_error(code: int, details: str | None = None) -> dict[str, Any]:
    """The ``errors[]`` item of a failed status."""
    title = ERRORS.get(code, ("Unknown error", "", 400))[0]
    detail = details or (WINDOW_DETAILS if code == 131047 else title)
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": detail},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


def change_value(
    phone_number_id: str,
    display_phone_number: str = "15550783881",
    *,
    messages: Sequence[Mapping[str, Any]] = (),
    statuses: Sequence[Mapping[str, Any]] = (),
    contacts: Sequence[Mapping[str, Any]] | None = None,
    errors: Sequence[Mapping[str, Any]] = (),
    contact_name: str = "Sheena Nelson",
) -> dict[str, Any]:
    """The ``value`` of a ``messages`` change. ``contacts`` default to one per distinct sender (its
    ``wa_id`` and, for a message with ``from_user_id``, its ``user_id``)."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
    }
    if messages:
        if contacts is None:
            senders = dict.fromkeys((m.get("from"), m.get("from_user_id")) for m in messages)
            contacts = [_contact(phone, bsuid, contact_name) for phone, bsuid in senders]
        value["contacts"] = [dict(c) for c in contacts]
        value["messages"] = [dict(m) for m in messages]
    if statuses:
        value["statuses"] = [dict(s) for s in statuses]
    if errors:
        value["errors"] = [dict(e) for e in errors]
    return value


def _contact(phone: str | None, bsuid: str | None, name: str) -> dict[str, Any]:
    contact: dict[str, Any] = {"profile": {"name": name}}
    if phone:
        contact["wa_id"] = phone
    if bsuid:
        contact["user_id"] = bsuid
    return contact


def as_user(
    message: Mapping[str, Any], bsuid: str, *, phone: bool = True, parent: str | None = None
) -> dict[str, Any]:
    """``message`` from a user known by ``bsuid`` (``from_user_id``); ``phone=False``: one who hid the
    number behind a username (no ``from``). ``parent``: the parent BSUID (``from_parent_user_id``)."""
    out = {k: v for k, v in message.items() if phone or k != "from"}
    out["from_user_id"] = bsuid
    if parent is not None:
        out["from_parent_user_id"] = parent
    return out


def change(value: Mapping[str, Any], field: str = "messages") -> dict[str, Any]:
    return {"value": dict(value), "field": field}


def entry(waba_id: str, changes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"id": waba_id, "changes": [dict(c) for c in changes]}


def envelope(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"object": WEBHOOK_OBJECT, "entry": [dict(e) for e in entries]}


def messages_payload(
    waba_id: str,
    phone_number_id: str,
    display_phone_number: str = "15550783881",
    *,
    messages: Sequence[Mapping[str, Any]] = (),
    statuses: Sequence[Mapping[str, Any]] = (),
    contact_name: str = "Sheena Nelson",
    contacts: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One delivery with one entry and one change (the common case)."""
    value = change_value(
        phone_number_id,
        display_phone_number,
        messages=messages,
        statuses=statuses,
        contact_name=contact_name,
        contacts=contacts,
    )
    return envelope([entry(waba_id, [change(value)])])


def batch(entries: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> dict[str, Any]:
    """A delivery of several entries, each ``(waba_id, [value, ...])`` with one change per value."""
    return envelope([entry(waba_id, [change(v) for v in values]) for waba_id, values in entries])


def text_batch(
    n_entries: int,
    n_changes: int,
    *,
    waba_id: str | Sequence[str],
    phone_number_id: str | Sequence[str],
    display_phone_number: str = "15550783881",
    from_: str = "16505551234",
    prefix: str = "batch",
) -> dict[str, Any]:
    """``n_entries`` x ``n_changes`` changes, each carrying one unique inbound text. ``waba_id`` and
    ``phone_number_id`` may be sequences (one per entry) to spread the batch over several numbers."""
    wabas = [waba_id] * n_entries if isinstance(waba_id, str) else list(waba_id)
    pnids = [phone_number_id] * n_entries if isinstance(phone_number_id, str) else list(phone_number_id)
    return batch(
        (
            wabas[e],
            [
                change_value(
                    pnids[e], display_phone_number, messages=[text_message(from_, f"{prefix} {e}.{c}")]
                )
                for c in range(n_changes)
            ],
        )
        for e in range(n_entries)
    )


def template_status_payload(
    waba_id: str,
    template_id: str,
    name: str,
    language: str,
    event: str,
    reason: str | None = None,
    *,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """A ``message_template_status_update`` delivery (event: APPROVED, REJECTED, PAUSED, DISABLED, ...)."""
    value = {
        "event": event,
        "message_template_id": int(template_id),
        "message_template_name": name,
        "message_template_language": language,
        "reason": reason or "NONE",
    }
    return {
        "object": WEBHOOK_OBJECT,
        "entry": [
            {
                "id": waba_id,
                "time": int(timestamp or time.time()),
                "changes": [{"value": value, "field": "message_template_status_update"}],
            }
        ],
    }


def serialize(payload: Mapping[str, Any]) -> bytes:
    """Bytes as Meta sends them: compact, non-ASCII escaped as ``\\uXXXX``."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(
    url: str,
    payload: Mapping[str, Any] | bytes,
    app_secret: str,
    *,
    signature: str | bool | None = None,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """POST one delivery like Meta does; returns (HTTP status, body text).

    ``signature``: None signs the exact bytes sent; False omits the header; a string is sent as is
    (``BAD_SIGNATURE`` for a wrong one)."""
    body = payload if isinstance(payload, bytes) else serialize(payload)
    sent_headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
    if signature is None:
        sent_headers["X-Hub-Signature-256"] = sign(body, app_secret)
    elif signature is not False:
        sent_headers["X-Hub-Signature-256"] = str(signature)
    sent_headers.update(headers or {})
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.post(url, data=body, headers=sent_headers) as resp:
            return resp.status, await resp.text()
    finally:
        if own:
            await session.close()


@dataclass
class Delivery:
    status: int
    text: str
    payload: dict[str, Any] = field(repr=False)


class WebhookSender:
    """Sends Meta-shaped, signed deliveries to ``target_url`` for the numbers a fake knows.

    Inbound messages open the fake's 24 h window for their sender; statuses are built from what the
    fake recorded as sent (recipient and ``biz_opaque_callback_data`` included)."""

    def __init__(self, target_url: str, app_secret: str, *, fake: FakeGraphAPI | None = None) -> None:
        self.target_url = target_url
        self.app_secret = app_secret
        self.fake = fake
        self.deliveries: list[Delivery] = []
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        signature: str | bool | None = None,
        app_secret: str | None = None,
        copies: int = 1,
    ) -> Delivery:
        """Deliver ``payload`` ``copies`` times (duplicates, as Meta's at-least-once does).

        Returns the last delivery."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        result: Delivery | None = None
        for _ in range(copies):
            code, text = await deliver(
                self.target_url,
                payload,
                app_secret or self.app_secret,
                signature=signature,
                session=self._session,
            )
            result = Delivery(
                code, text, dict(json.loads(payload)) if isinstance(payload, bytes) else dict(payload)
            )
            self.deliveries.append(result)
        assert result is not None
        return result

    def _number(self, phone_number_id: str) -> _Number:
        if self.fake is None or phone_number_id not in self.fake.numbers:
            raise KeyError(f"the fake does not know phone_number_id {phone_number_id}")
        return self.fake.numbers[phone_number_id]

    def inbound_payload(
        self,
        phone_number_id: str,
        *messages: Mapping[str, Any],
        contact_name: str = "Sheena Nelson",
        contacts: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        number = self._number(phone_number_id)
        return messages_payload(
            number.waba_id,
            phone_number_id,
            number.display_phone_number,
            messages=messages,
            contact_name=contact_name,
            contacts=contacts,
        )

    async def inbound(
        self,
        phone_number_id: str,
        *messages: Mapping[str, Any],
        contact_name: str = "Sheena Nelson",
        contacts: Sequence[Mapping[str, Any]] | None = None,
        signature: str | bool | None = None,
        copies: int = 1,
    ) -> Delivery:
        """Deliver user messages (built with ``text_message`` etc.) to ``phone_number_id``; a
        successful delivery opens the fake's window for each sender (by phone number and BSUID)."""
        payload = self.inbound_payload(
            phone_number_id, *messages, contact_name=contact_name, contacts=contacts
        )
        result = await self.send(payload, signature=signature, copies=copies)
        if self.fake is not None and 200 <= result.status < 300:
            self.fake.opened_by(phone_number_id, messages)
        return result

    async def text(self, phone_number_id: str, from_: str, body: str, **kw: Any) -> tuple[Delivery, str]:
        """Deliver one inbound text; returns (delivery, wamid)."""
        message = text_message(from_, body)
        return await self.inbound(phone_number_id, message, **kw), message["id"]

    def status_payload(
        self,
        wamid: str,
        *statuses_: str,
        errors: Sequence[Mapping[str, Any]] | None = None,
        timestamp: float | None = None,
    ) -> dict[str, Any]:
        """One delivery carrying ``statuses_`` (in that order) for a message the fake sent."""
        if self.fake is None or wamid not in self.fake.sent_by_wamid:
            raise KeyError(f"the fake did not send {wamid}")
        record = self.fake.sent_by_wamid[wamid]
        number = self._number(record["pnid"])
        base = timestamp if timestamp is not None else record["at"]
        items = [
            status(
                wamid,
                s,
                record["to"],
                timestamp=base + i,
                errors=errors if s == "failed" else None,
                biz_opaque_callback_data=record["biz_opaque_callback_data"],
            )
            for i, s in enumerate(statuses_)
        ]
        return messages_payload(
            number.waba_id, number.phone_number_id, number.display_phone_number, statuses=items
        )

    async def statuses(
        self,
        wamid: str,
        sequence: Sequence[str] = ("sent", "delivered", "read"),
        *,
        together: bool = False,
        errors: Sequence[Mapping[str, Any]] | None = None,
        copies: int = 1,
        signature: str | bool | None = None,
    ) -> list[Delivery]:
        """Deliver status updates for ``wamid`` in the order given: pass ("read", "sent") for
        out-of-order with ``delivered`` missing, ("failed",) with ``errors`` for a failure. One
        delivery per status, or all in one delivery with ``together=True``."""
        if together:
            return [
                await self.send(
                    self.status_payload(wamid, *sequence, errors=errors), copies=copies, signature=signature
                )
            ]
        return [
            await self.send(self.status_payload(wamid, s, errors=errors), copies=copies, signature=signature)
            for s in sequence
        ]


async def _serve(host: str, port: int, enforce_window: bool) -> None:
    fake = FakeGraphAPI(enforce_window=enforce_window, host=host)
    fake._bind_port = port
    await fake.start()
    print(f"FAKE_GRAPH_API_URL={fake.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake in its own process (benchmarks): numbers, windows and stats via /_fake/..."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-window", action="store_true", help="do not enforce the 24 h window")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, not args.no_window))


if __name__ == "__main__":
    main()
