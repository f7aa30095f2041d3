"""``/api/whatsapp/webhook``: Meta's verification handshake (GET) and signed deliveries (POST).

POST, in order, nothing stored until the last step. Until step 5 the body is unauthenticated (anyone
can send it), so the work before it is bounded and kept off the event loop for large bodies:
1. the raw body, read once, at most ``WEBHOOK_MAX_BODY_BYTES`` (413 past it);
2. an ``X-Hub-Signature-256`` header must be present and well-formed (401);
3. the body must be JSON shaped like a WhatsApp Business Account delivery (400; nested deeper than
   ``http.parsing.MAX_JSON_DEPTH``: 400 ``too_deep``), and only its routing ids are read
   (``webhooks/prescan.py``): each change's ``value.metadata.phone_number_id``, or for changes of
   other fields (``webhooks/fields.py``) that name no number (template and account updates) the WABA
   id ``entry.id``. More than ``WEBHOOK_MAX_ROUTING_IDS`` distinct ids: 413 ``too_many_ids``. A body
   over ``WEBHOOK_INLINE_DECODE_BYTES`` is read in a worker process (``webhooks/decoder.py``); a
   smaller one is parsed whole at once (``payload.parse_delivery``: bounded work, as costly as the
   walk) and its ids read from that parse (``prescan.parsed_ids``), its counters kept for step 6;
4. each id is answered by the tenant directory (cached; misses in one query per 1,000, which is one
   for anything Meta sends; unknown ids cached too, within a bound):
   a number goes to the active tenant that owns it, a WABA to every active tenant whose config holds
   it. Ids no active tenant owns are counted and summarised in ONE log line per delivery (at most one
   a second, ``directory.UnknownLog``), never stored. A delivery naming no active tenant ends here:
   200, nothing more of it read;
5. the signature is checked against the app secret of EVERY tenant the delivery names (HMAC-SHA256 of
   the raw bytes, constant-time compare): one mismatch -> 401 and nothing is written (a delivery signed
   with tenant A's secret cannot name tenant B's number or WABA);
6. the whole delivery is parsed (``payload.parse_delivery``, ``fields.parse_fields``) and grouped by
   tenant, and joins the current group commit; 200 once it is committed, 503 if the database fails
   (Meta redelivers; storage is idempotent per wamid, per (wamid, status) and per change of the
   other fields).
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import Field

from control_plane import errors
from control_plane.db import whatsapp_config as config_db
from control_plane.http.models import QueryModel, ResponseModel
from control_plane.http.parsing import read_body
from control_plane.http.routing import Router
from control_plane.logs import current_tenant
from control_plane.webhooks import fields, prescan
from control_plane.webhooks.decoder import DeliveryDecoder
from control_plane.webhooks.directory import (
    Resolved,
    Target,
    TenantDirectory,
    UnknownLog,
    parse_signature,
    signature_matches,
)
from control_plane.webhooks.ingest import TenantWork, WebhookIngester
from control_plane.webhooks.payload import ParsedDelivery, parse_delivery
from control_plane.webhooks.prescan import RoutingIds

log = logging.getLogger(__name__)
router = Router()
TAGS = ("webhooks",)
PATH = "/api/whatsapp/webhook"


class WebhookCounters:
    """Process-local counters (exposed by the metrics endpoint when it exists)."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.accepted = 0
        self.bad_signature = 0
        self.unknown_phone_number_id = 0
        self.unknown_waba_id = 0
        self.notices = 0  # changes of other fields routed to a tenant (webhooks/fields.py)
        self.ignored_changes = 0
        self.skipped_items = 0
        self.too_large = 0
        self.too_many_ids = 0  # more distinct numbers and WABAs than WEBHOOK_MAX_ROUTING_IDS (413)
        self.unknown_only = 0  # deliveries naming no active tenant: 200, nothing stored, nothing parsed
        self.unavailable = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class HandshakeQuery(QueryModel):
    mode: str | None = Field(default=None, alias="hub.mode", max_length=64)
    challenge: str | None = Field(default=None, alias="hub.challenge", max_length=512)
    verify_token: str | None = Field(default=None, alias="hub.verify_token", max_length=512)


class WebhookAck(ResponseModel):
    ok: bool = True
    messages: int = Field(0, description="Inbound messages in the delivery (for known numbers)")
    statuses: int = Field(0, description="Status updates in the delivery (for known numbers)")
    unknown_phone_number_ids: int = Field(
        0, description="Changes for numbers no active tenant owns (not stored)"
    )
    notices: int = Field(
        0,
        description="Changes of other fields (templates, account, preferences, calls ...) routed to tenants",
    )
    unknown_waba_ids: int = Field(
        0, description="Changes for WhatsApp Business Accounts no active tenant holds (not stored)"
    )


@router.route(
    "GET",
    PATH,
    auth="none",
    tags=TAGS,
    query=HandshakeQuery,
    errors=(403,),
    produces=("text/plain",),
    summary="Meta's webhook verification: echoes hub.challenge when hub.verify_token matches an "
    "active tenant's verify token",
)
async def handshake(request: web.Request, query: HandshakeQuery) -> web.Response:
    if query.mode != "subscribe" or not query.verify_token or query.challenge is None:
        raise errors.Forbidden("webhook verification failed", code="verification_failed")
    async with request.app["db"].connect() as conn:
        matches = await config_db.find_active_configs_by_verify_token_hash(
            conn, request.app["secret_box"].keyed_hash(query.verify_token)
        )
    if not matches:
        log.warning("webhook handshake with an unknown verify token")
        raise errors.Forbidden("webhook verification failed", code="verification_failed")
    log.info("webhook handshake ok tenant=%s", ",".join(m["tenant_id"] for m in matches))
    return web.Response(text=query.challenge, content_type="text/plain")


# The ack as ``web.json_response`` writes ``WebhookAck`` (the same bytes), without pydantic per request.
_ACK = (
    '{"ok": true, "messages": %d, "statuses": %d, "unknown_phone_number_ids": %d, "notices": %d, '
    '"unknown_waba_ids": %d}'
)


@router.route(
    "POST",
    PATH,
    auth="none",
    tags=TAGS,
    response=WebhookAck,
    errors=(400, 401, 413, 422, 503),
    summary="Meta's signed webhook deliveries (X-Hub-Signature-256); 200 only once stored",
    lean=True,
)
async def receive(request: web.Request) -> web.Response:
    # A lean route (see http/routing.py): it reads, checks and answers by itself; errors still go
    # through the error middleware, the access line through the access middleware.
    app = request.app
    counters: WebhookCounters = app["webhook_counters"]
    counters.deliveries += 1
    try:
        raw = await read_body(request, app["settings"].webhook_max_body_bytes)
    except errors.PayloadTooLarge:
        counters.too_large += 1
        raise
    digest = parse_signature(request.headers.get("X-Hub-Signature-256"))
    if digest is None:
        counters.bad_signature += 1
        raise errors.Unauthenticated("missing or malformed X-Hub-Signature-256", code="invalid_signature")
    decoder: DeliveryDecoder = app["webhook_decoder"]
    parsed: ParsedDelivery | None = None
    if len(raw) <= decoder.inline_max_bytes:  # small: parsed whole at once, its ids read from that
        parsed = parse_delivery(decoder.parse(raw))  # lone surrogates repaired (text_repair.py)
        ids = _parsed_ids(parsed, decoder.max_ids, counters)
    else:
        _, ids = await _decode(decoder, raw, counters)
    # Routing: the directory's cache answers without waiting; misses are loaded in batches.
    directory: TenantDirectory = app["webhook_directory"]
    resolved = await directory.resolve(ids.numbers, ids.wabas)
    named = resolved.app_secrets()
    if not named:  # no tenant to check it against, nothing to store: acknowledged, nothing more read
        return _ack_unknown(app, resolved, counters)
    _check_signatures(raw, digest, named, counters)

    if parsed is None:
        parsed = parse_delivery(decoder.parse(raw))  # repaired text (text_repair.py)
    routed = await _parse_and_route(directory, parsed, resolved, counters)
    _check_signatures(raw, digest, {k: v for k, v in routed.app_secrets.items() if k not in named}, counters)
    app["webhook_unknown_log"].note(routed.unknown_numbers, routed.unknown_waba_ids)
    works = routed.works
    if works:
        token = current_tenant.set(next(iter(works)) if len(works) == 1 else None)
        try:
            ingester: WebhookIngester = app["webhook_ingester"]
            await ingester.submit(list(works.values()))
        except errors.Unavailable:
            counters.unavailable += 1
            raise
        finally:
            current_tenant.reset(token)
    counters.accepted += 1
    unknown, unknown_wabas = len(routed.unknown_numbers), len(routed.unknown_waba_ids)
    return _ack(routed.messages, routed.statuses, unknown, routed.notices, unknown_wabas)


def _ack(messages: int, statuses: int, unknown: int, notices: int, unknown_wabas: int) -> web.Response:
    return web.Response(
        body=(_ACK % (messages, statuses, unknown, notices, unknown_wabas)).encode(),
        content_type="application/json",
        charset="utf-8",
    )


async def _decode(decoder: DeliveryDecoder, raw: bytes, counters: WebhookCounters) -> tuple[Any, RoutingIds]:
    try:
        return await decoder.decode(raw)
    except errors.PayloadTooLarge:
        counters.too_many_ids += 1
        raise
    except errors.Unavailable:
        counters.unavailable += 1
        raise


def _parsed_ids(parsed: ParsedDelivery, max_ids: int, counters: WebhookCounters) -> RoutingIds:
    try:
        return prescan.parsed_ids(parsed, max_ids)
    except errors.PayloadTooLarge:
        counters.too_many_ids += 1
        raise


def _ack_unknown(app: web.Application, resolved: Resolved, counters: WebhookCounters) -> web.Response:
    """A delivery that names no active tenant: counted, summarised in the log, 200 (Meta must not
    redeliver it), nothing stored and nothing more of it read."""
    numbers, wabas = resolved.unknown()
    counters.unknown_phone_number_id += len(numbers)
    counters.unknown_waba_id += len(wabas)
    counters.unknown_only += 1
    counters.accepted += 1
    app["webhook_unknown_log"].note(numbers, wabas)
    return _ack(0, 0, len(numbers), 0, len(wabas))


async def _parse_and_route(
    directory: TenantDirectory, parsed: ParsedDelivery, resolved: Resolved, counters: WebhookCounters
) -> _Routed:
    """The whole delivery (its signature held for every tenant ``resolved`` names) grouped by
    tenant. The prescan's ids are the full parse's; an id it did not see is looked up here and its
    tenant's signature checked by the caller all the same."""
    other = fields.parse_fields(parsed.fields) if parsed.fields else None
    if other is not None:
        counters.ignored_changes += other.skipped
    counters.ignored_changes += parsed.ignored_changes
    counters.skipped_items += parsed.skipped_items
    targets = resolved.numbers
    numbers = parsed.numbers if other is None else {**parsed.numbers, **other.numbers}
    missing = [pnid for pnid in numbers if pnid not in targets]
    if missing:
        targets = {**targets, **await directory.targets(missing)}
    routed = _by_tenant(parsed, targets)
    if other is not None:
        wabas = resolved.wabas
        missing = [waba for waba in other.wabas if waba not in wabas]
        if missing:
            wabas = {**wabas, **await directory.waba_targets(missing)}
        _route_fields(routed, other, targets, wabas, counted=parsed.numbers)
        counters.notices += routed.notices
    counters.unknown_phone_number_id += len(routed.unknown_numbers)
    counters.unknown_waba_id += len(routed.unknown_waba_ids)
    return routed


@dataclass(slots=True)
class _Routed:
    """A delivery's batches grouped by the tenant owning each number."""

    works: dict[str, TenantWork] = field(default_factory=dict)
    app_secrets: dict[str, bytes | None] = field(default_factory=dict)
    unknown_numbers: list[str] = field(default_factory=list)  # numbers no active tenant owns
    unknown_waba_ids: list[str] = field(default_factory=list)  # WABA ids no active tenant holds
    messages: int = 0
    statuses: int = 0
    notices: int = 0

    def work(self, target: Target) -> TenantWork:
        """The target's tenant's work (made, and its app secret noted, on first use)."""
        work = self.works.get(target.tenant_id)
        if work is None:
            work = self.works[target.tenant_id] = TenantWork(target.tenant_id)
            self.app_secrets[target.tenant_id] = target.app_secret
        return work


def _by_tenant(parsed: ParsedDelivery, targets: dict[str, Target | None]) -> _Routed:
    routed = _Routed()
    works = routed.works
    for pnid, batch in parsed.numbers.items():
        target = targets.get(pnid)
        if target is None:
            routed.unknown_numbers.append(pnid)
            continue
        tenant_id = target.tenant_id
        work = works.get(tenant_id)
        if work is None:
            work = works[tenant_id] = TenantWork(tenant_id, batch.messages, batch.statuses)
            routed.app_secrets[tenant_id] = target.app_secret
        else:
            work.messages = [*work.messages, *batch.messages]
            work.statuses = [*work.statuses, *batch.statuses]
        if batch.changes:
            work.changes = [*work.changes, *batch.changes]
        routed.messages += len(batch.messages)
        routed.statuses += len(batch.statuses)
        if batch.errors:
            log.warning(
                "webhook errors for phone_number_id=%s tenant=%s: %s",
                pnid,
                tenant_id,
                str(batch.errors)[:500],
            )
            work.notices.extend(fields.messages_errors_notice(pnid, errs) for errs in batch.errors)
            routed.notices += len(batch.errors)
    return routed


def _route_fields(
    routed: _Routed,
    other: fields.FieldDelivery,
    targets: dict[str, Target | None],
    wabas: dict[str, tuple[Target, ...]],
    *,
    counted: Container[str] = (),
) -> None:
    """The other fields' notices and echoes to their tenants: by number, else by WABA (unknown
    numbers in ``counted`` were counted already)."""
    for pnid, batch in other.numbers.items():
        target = targets.get(pnid)
        if target is None:
            if pnid not in counted:
                routed.unknown_numbers.append(pnid)
            continue
        _add_fields(routed, routed.work(target), batch)
    for waba_id, batch in other.wabas.items():
        owners = wabas.get(waba_id) or ()
        if not owners:
            routed.unknown_waba_ids.append(waba_id)
        for target in owners:
            _add_fields(routed, routed.work(target), batch)


def _add_fields(routed: _Routed, work: TenantWork, batch: fields.FieldBatch) -> None:
    work.notices.extend(batch.notices)
    if batch.phone:
        work.phone = [*work.phone, *batch.phone]
    routed.notices += len(batch.notices)


def _check_signatures(
    raw: bytes, digest: bytes, app_secrets: dict[str, bytes | None], counters: WebhookCounters
) -> None:
    """Every tenant the delivery names must have signed it: all are verified before anything is stored."""
    for tenant_id, secret in app_secrets.items():
        if not signature_matches(raw, digest, secret):
            counters.bad_signature += 1
            log.warning("webhook signature mismatch tenant=%s (nothing stored)", tenant_id)
            raise errors.Unauthenticated("X-Hub-Signature-256 does not match", code="invalid_signature")


async def webhooks_context(app: web.Application):
    """Cleanup context: the tenant directory and the decoder's worker; deliveries go to the app's
    inbound service (set up before, in ``app["inbound"]``)."""
    settings = app["settings"]
    app["webhook_counters"] = WebhookCounters()
    app["webhook_directory"] = TenantDirectory(app["db"], app["secret_box"])
    app["webhook_unknown_log"] = UnknownLog()
    app["webhook_ingester"] = app["inbound"]
    decoder = app["webhook_decoder"] = DeliveryDecoder(
        max_ids=settings.webhook_max_routing_ids, inline_max_bytes=settings.webhook_inline_decode_bytes
    )
    try:
        yield
    finally:
        await decoder.close()


def stats(app: web.Application) -> dict[str, Any]:
    """Counters and group-commit figures (benchmarks, metrics)."""
    return {**app["webhook_counters"].as_dict(), **app["webhook_ingester"].stats.as_dict()}
