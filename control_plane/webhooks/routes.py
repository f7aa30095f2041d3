"""``/api/whatsapp/webhook``: Meta's verification handshake (GET) and signed deliveries (POST).

POST, in order, nothing stored until the last step:
1. the raw body, read once, at most ``WEBHOOK_MAX_BODY_BYTES`` (413 past it);
2. an ``X-Hub-Signature-256`` header must be present and well-formed (401);
3. the body must be JSON shaped like a WhatsApp Business Account delivery (400);
4. every entry and every change is grouped by ``value.metadata.phone_number_id``; each id is routed to
   the active tenant that owns it; unknown ids are logged and counted, never stored. Changes of other
   fields (``webhooks/fields.py``) that name no number (template and account updates) are routed by
   the WABA id ``entry.id`` to every active tenant whose config holds it; unknown WABAs likewise;
5. the signature is checked against the app secret of EVERY tenant the delivery names (HMAC-SHA256 of
   the raw bytes, constant-time compare): one mismatch -> 401 and nothing is written (a delivery signed
   with tenant A's secret cannot name tenant B's number or WABA);
6. the delivery joins the current group commit; 200 once it is committed, 503 if the database fails
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
from control_plane.http.parsing import parse_json, read_body
from control_plane.http.routing import Router
from control_plane.logs import current_tenant
from control_plane.webhooks import fields
from control_plane.webhooks.directory import Target, TenantDirectory, parse_signature, signature_matches
from control_plane.webhooks.ingest import TenantWork, WebhookIngester
from control_plane.webhooks.payload import ParsedDelivery, parse_delivery

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
    parsed = parse_delivery(parse_json(raw))
    other = fields.parse_fields(parsed.fields) if parsed.fields else None
    if other is not None:
        counters.ignored_changes += other.skipped
    if parsed.ignored_changes:
        counters.ignored_changes += parsed.ignored_changes
    if parsed.skipped_items:
        counters.skipped_items += parsed.skipped_items

    # Routing: the directory's cache answers without waiting; a miss (or an expired entry) is loaded.
    directory: TenantDirectory = app["webhook_directory"]
    targets, missing = _cached_targets(directory, parsed, other)
    if missing:
        targets.update(await directory.targets(missing))
    routed = _by_tenant(parsed, targets)
    if other is not None:
        wabas = await directory.waba_targets(list(other.wabas)) if other.wabas else {}
        _route_fields(routed, other, targets, wabas, counted=parsed.numbers)
        counters.notices += routed.notices
        counters.unknown_waba_id += routed.unknown_wabas
    if routed.unknown:
        counters.unknown_phone_number_id += routed.unknown
    _check_signatures(raw, digest, routed, counters)

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
    return web.Response(
        body=(
            _ACK % (routed.messages, routed.statuses, routed.unknown, routed.notices, routed.unknown_wabas)
        ).encode(),
        content_type="application/json",
        charset="utf-8",
    )


@dataclass(slots=True)
class _Routed:
    """A delivery's batches grouped by the tenant owning each number."""

    works: dict[str, TenantWork] = field(default_factory=dict)
    app_secrets: dict[str, bytes | None] = field(default_factory=dict)
    unknown: int = 0  # numbers no active tenant owns
    messages: int = 0
    statuses: int = 0
    notices: int = 0
    unknown_wabas: int = 0  # WABA ids no active tenant holds

    def work(self, target: Target) -> TenantWork:
        """The target's tenant's work (made, and its app secret noted, on first use)."""
        work = self.works.get(target.tenant_id)
        if work is None:
            work = self.works[target.tenant_id] = TenantWork(target.tenant_id)
            self.app_secrets[target.tenant_id] = target.app_secret
        return work


def _cached_targets(
    directory: TenantDirectory, parsed: ParsedDelivery, other: fields.FieldDelivery | None = None
) -> tuple[dict[str, Target | None], list[str] | None]:
    """The targets the directory's cache knows, and the numbers it must load (None: none)."""
    targets: dict[str, Target | None] = {}
    missing = None
    numbers = parsed.numbers if other is None else {**parsed.numbers, **other.numbers}
    for pnid in numbers:
        target = directory.cached(pnid)
        if target is False:
            missing = [pnid] if missing is None else [*missing, pnid]
        else:
            targets[pnid] = target
    return targets, missing


def _by_tenant(parsed: ParsedDelivery, targets: dict[str, Target | None]) -> _Routed:
    routed = _Routed()
    works = routed.works
    for pnid, batch in parsed.numbers.items():
        target = targets.get(pnid)
        if target is None:
            routed.unknown += 1
            log.warning(
                "webhook for unknown phone_number_id=%s (%d messages, %d statuses) not stored",
                pnid,
                len(batch.messages),
                len(batch.statuses),
            )
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
            routed.unknown += pnid not in counted
            log.warning("webhook %s for unknown phone_number_id=%s not stored", _field_names(batch), pnid)
            continue
        _add_fields(routed, routed.work(target), batch)
    for waba_id, batch in other.wabas.items():
        owners = wabas.get(waba_id) or ()
        if not owners:
            routed.unknown_wabas += 1
            log.warning("webhook %s for unknown waba_id=%s not stored", _field_names(batch), waba_id)
        for target in owners:
            _add_fields(routed, routed.work(target), batch)


def _add_fields(routed: _Routed, work: TenantWork, batch: fields.FieldBatch) -> None:
    work.notices.extend(batch.notices)
    if batch.phone:
        work.phone = [*work.phone, *batch.phone]
    routed.notices += len(batch.notices)


def _field_names(batch: fields.FieldBatch) -> str:
    return ",".join(sorted({n["field"] for n in batch.notices})) or "change"


def _check_signatures(raw: bytes, digest: bytes, routed: _Routed, counters: WebhookCounters) -> None:
    """Every tenant the delivery names must have signed it: all are verified before anything is stored."""
    for tenant_id, secret in routed.app_secrets.items():
        if not signature_matches(raw, digest, secret):
            counters.bad_signature += 1
            log.warning("webhook signature mismatch tenant=%s (nothing stored)", tenant_id)
            raise errors.Unauthenticated("X-Hub-Signature-256 does not match", code="invalid_signature")


async def webhooks_context(app: web.Application):
    """Cleanup context: the tenant directory; deliveries go to the app's inbound service (set up
    before, in ``app["inbound"]``)."""
    app["webhook_counters"] = WebhookCounters()
    app["webhook_directory"] = TenantDirectory(app["db"], app["secret_box"])
    app["webhook_ingester"] = app["inbound"]
    yield


def stats(app: web.Application) -> dict[str, Any]:
    """Counters and group-commit figures (benchmarks, metrics)."""
    return {**app["webhook_counters"].as_dict(), **app["webhook_ingester"].stats.as_dict()}
