"""The messaging outbox (issue 6): dispatch state beside each outbound message row, the history of
its transitions, and per-tenant messaging settings. The tables and the state diagram are in
``outbox_schema.py``; the functions, by concern, in

    outbox_enqueue.py    enqueue (with idempotency), enqueue_many
    outbox_claim.py      due_tenants, next_due_at, bring_forward, claim
    outbox.py            record_sent, record_outcomes (what happened to claimed messages)
    outbox_recovery.py   expire_leases, claims_of, to_unknown, release_claims, list_unknown,
                         confirmations, requeue, status_delays, last_status_at
    outbox_reads.py      rows and transitions, messages by id, pending counts, messaging settings

and every one is importable from here (``outbox_db.claim``).

The message row (``messages.status``) follows: queued -> sending -> sent -> delivered -> read, or
failed with the provider's code and message. Every change the dispatcher makes is a row in
``message_transitions`` with its reason (which road, why, which error).

Hot paths are batched: ``claim`` is four statements for N rows, ``record_outcomes`` a fixed handful
of statements (CASE-per-id updates, multi-row inserts) whatever the batch size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db import sql
from control_plane.db.engine import utcnow
from control_plane.db.messages import conversations, message_statuses, messages
from control_plane.db.metadata import ERROR_CODE_LEN
from control_plane.db.outbox_claim import bring_forward, claim, due_tenants, next_due_at
from control_plane.db.outbox_enqueue import enqueue, enqueue_many, find_by_idempotency_key
from control_plane.db.outbox_reads import (
    get_outbox,
    get_settings,
    latest_inbound,
    list_transitions,
    messages_by_ids,
    pending_counts,
    route_reasons,
    save_settings,
)
from control_plane.db.outbox_recovery import (
    claims_of,
    expire_leases,
    find_cloud_confirmation,
    find_web_confirmation,
    last_status_at,
    list_unknown,
    orphan_status_message_ids,
    release_claims,
    requeue,
    requeue_unknown,
    status_delays,
    to_unknown,
)
from control_plane.db.outbox_schema import (
    REQUESTED_PROVIDERS,
    STATES,
    clip,
    message_transitions,
    messaging_settings,
    outbox,
    transition_row,
)
from control_plane.db.sql import literal, literal_cache, literal_dt

CHUNK = 100  # rows per CASE statement: MariaDB evaluates CASE linearly, so a CASE over N rows costs N^2


def _case(ids_to_values: dict[str, Any], column: sa.Column, key: sa.Column) -> Any:
    return sa.case(ids_to_values, value=key, else_=column)


def _outbox_rows(tenant_id: str, message_ids: Sequence[str]) -> sa.Update:
    """An UPDATE of these messages' outbox rows."""
    return outbox.update().where(outbox.c.tenant_id == tenant_id, outbox.c.message_id.in_(message_ids))


def _outbox_case(
    outcomes: Sequence[dict[str, Any]], column: str, value: Callable[[dict[str, Any]], Any]
) -> Any:
    """``outbox.<column>`` per message id: ``value(outcome)`` for these outcomes, else unchanged."""
    return _case({o["message_id"]: value(o) for o in outcomes}, outbox.c[column], outbox.c.message_id)


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _record_sent(
    conn: AsyncConnection, tenant_id: str, sent: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """The hot path (nearly every outcome): text statements, compiled cheaply, at most CHUNK rows per
    CASE; the outbox rows are updated per (provider, reason) group with a plain IN list."""
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for o in sent:
        by_provider.setdefault(o["provider"], []).append(o)
    for provider, group in sorted(by_provider.items()):
        for chunk in _chunks(group):
            whens = " ".join(f"WHEN :i{n} THEN :p{n}" for n in range(len(chunk)))
            at_whens = " ".join(f"WHEN :i{n} THEN :a{n}" for n in range(len(chunk)))
            in_list = ", ".join(f":i{n}" for n in range(len(chunk)))
            params: dict[str, Any] = {"t": tenant_id, "now": now, "prov": provider}
            for n, o in enumerate(chunk):
                params[f"i{n}"] = o["message_id"]
                params[f"p{n}"] = o["provider_message_id"]
                params[f"a{n}"] = o.get("at") or now
            await conn.execute(
                sa.text(
                    f"UPDATE messages SET provider = :prov, provider_message_id = CASE id {whens} END, "
                    "status = CASE WHEN status IN ('queued', 'sending') THEN 'sent' ELSE status END, "
                    f"sent_at = COALESCE(sent_at, CASE id {at_whens} END), updated_at = :now "
                    f"WHERE tenant_id = :t AND id IN ({in_list})"
                ),
                params,
            )
        conv_ids = sorted({o["conversation_id"] for o in group if o.get("conversation_id") is not None})
        for chunk in _chunks(conv_ids, 500):
            await conn.execute(
                conversations.update()
                .where(conversations.c.tenant_id == tenant_id, conversations.c.id.in_(list(chunk)))
                .values(provider_last=provider)
            )
    by_reason: dict[tuple[str, str], list[str]] = {}
    for o in sent:
        by_reason.setdefault((o["provider"], clip(o.get("reason"), 255) or ""), []).append(o["message_id"])
    for (provider, reason), ids in sorted(by_reason.items()):
        for chunk in _chunks(ids, 500):
            await conn.execute(
                _outbox_rows(tenant_id, list(chunk)).values(
                    state="done",
                    route_provider=provider,
                    route_reason=reason or None,
                    last_error=None,
                    updated_at=now,
                )
            )


async def record_sent(
    conn: AsyncConnection, items: Sequence[tuple[str, dict[str, Any]]], *, now: dt.datetime | None = None
) -> set[tuple[str, str]]:
    """Record sends the providers accepted, for any tenants: ``items`` are ``(tenant_id, outcome)``
    with outcomes of kind "sent" (``message_id``, ``provider``, ``provider_message_id``,
    ``conversation_id``, ``reason``, ``at`` = when the provider accepted it). The message becomes
    sent (unless a status already moved it on), the outbox row done, the transition logged.

    Returns the ``(tenant_id, provider_message_id)`` pairs that already have status facts stored
    without their message (a status webhook beat this record): the caller applies them.
    MariaDB: one round trip whatever the number of rows and tenants."""
    if not items:
        return set()
    now = now or utcnow()
    if sql.raw_mariadb(conn):
        return await _record_sent_raw(conn, items, now)
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for tenant_id, o in items:
        by_tenant.setdefault(tenant_id, []).append(o)
    raced: set[tuple[str, str]] = set()
    for tenant_id, sent in sorted(by_tenant.items()):
        await record_outcomes(conn, tenant_id, sent, now=now)
        raced |= {
            (tenant_id, p)
            for p in await unmatched_status_ids(conn, tenant_id, [o["provider_message_id"] for o in sent])
        }
    return raced


async def _record_sent_raw(
    conn: AsyncConnection, items: Sequence[tuple[str, dict[str, Any]]], now: dt.datetime
) -> set[tuple[str, str]]:
    q = literal_cache()  # tenants, providers and reasons repeat: their literals once
    at_now = literal_dt(now)
    values: list[tuple[str, str, str, str, str]] = []
    transitions: list[str] = []
    done: dict[tuple[str, str], list[str]] = {}  # (provider, reason) literals -> message id literals
    convs: dict[str, set[int]] = {}  # provider (name, so updated in the Core twin's order) -> ids
    pmids: dict[str, list[str]] = {}
    for tenant_id, o in items:
        mid, t, prov = literal(o["message_id"]), q(tenant_id), q(o["provider"])
        at = literal_dt(o["at"]) if o.get("at") else at_now
        reason = q(clip(o.get("reason"), 255) or None)
        pmid = literal(o["provider_message_id"])
        values.append((mid, t, prov, pmid, at))
        transitions.append(f"({t},{mid},'sending','sent',{prov},{reason},{at})")
        done.setdefault((prov, reason), []).append(mid)
        if o.get("conversation_id") is not None:
            convs.setdefault(o["provider"], set()).add(int(o["conversation_id"]))
        pmids.setdefault(t, []).append(pmid)
    # The rows as a derived table: the first names (and types) the columns, the rest follow as VALUES.
    derived = "SELECT {} AS id, {} AS t, {} AS p, {} AS w, CAST({} AS DATETIME(6)) AS a".format(*values[0])
    if len(values) > 1:
        derived += " UNION ALL VALUES " + ",".join(["(" + ",".join(v) + ")" for v in values[1:]])
    statements = [
        "SELECT DISTINCT tenant_id, provider_message_id FROM message_statuses WHERE message_id IS NULL AND ("
        + " OR ".join(
            f"(tenant_id = {t} AND provider_message_id IN ({','.join(ps)}))" for t, ps in pmids.items()
        )
        + ")",
        f"UPDATE messages m JOIN ({derived}) v ON m.id = v.id "
        "SET m.provider = v.p, m.provider_message_id = v.w, "
        "m.status = IF(m.status IN ('queued', 'sending'), 'sent', m.status), "
        f"m.sent_at = COALESCE(m.sent_at, v.a), m.updated_at = {at_now} WHERE m.tenant_id = v.t",
    ]
    statements += [
        f"UPDATE outbox SET state = 'done', route_provider = {prov}, route_reason = {reason}, "
        f"last_error = NULL, updated_at = {at_now} WHERE message_id IN ({','.join(ids)})"
        for (prov, reason), ids in sorted(done.items())
    ]
    statements += [
        f"UPDATE conversations SET provider_last = {q(provider)} "
        f"WHERE id IN ({','.join(map(str, sorted(ids)))}) "
        f"AND (provider_last IS NULL OR provider_last <> {q(provider)})"
        for provider, ids in sorted(convs.items())
    ]
    statements.append(
        "INSERT INTO message_transitions (tenant_id, message_id, from_status, to_status, provider, "
        "reason, at) VALUES " + ",".join(transitions)
    )
    (raced, _), *_ = await sql.round_trip(conn, statements, what="messaging outbox")
    return {(t, p) for t, p in raced}


async def record_outcomes(
    conn: AsyncConnection,
    tenant_id: str,
    outcomes: Sequence[dict[str, Any]],
    *,
    now: dt.datetime | None = None,
    return_rows: bool = False,
) -> list[dict[str, Any]]:
    """Record what happened to claimed messages, in a handful of statements per ~100 rows.

    Each outcome: ``message_id``, ``kind`` (sent | failed | retry | defer | unknown), ``provider``,
    ``reason`` (the route reason, kept on the outbox row), and per kind ``provider_message_id`` and
    ``conversation_id``; ``error_code``/``error_message``; ``next_attempt_at``. With ``return_rows``,
    returns the message rows (after the change, with ``wa_id``) of sent and failed outcomes."""
    now = now or utcnow()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_kind.setdefault(o["kind"], []).append(o)
    sent, failed = by_kind.get("sent", []), by_kind.get("failed", [])
    transitions: list[dict[str, Any]] = []
    if sent:
        await _record_sent(conn, tenant_id, sent, now)
        transitions += [
            transition_row(
                tenant_id,
                o["message_id"],
                "sending",
                "sent",
                at=o.get("at") or now,
                provider=o["provider"],
                reason=o.get("reason"),
            )
            for o in sent
        ]
    for chunk in _chunks(failed):
        await _record_failed(conn, tenant_id, chunk, now)
        transitions += _transitions(tenant_id, chunk, "failed", now)
    for chunk in _chunks(by_kind.get("retry", []) + by_kind.get("defer", [])):
        await _record_again(conn, tenant_id, chunk, now)
        transitions += _transitions(tenant_id, chunk, "queued", now)
    for chunk in _chunks(by_kind.get("unknown", [])):
        await _record_unknown(conn, tenant_id, chunk, now)
        transitions += [
            transition_row(
                tenant_id,
                o["message_id"],
                "sending",
                "sending",
                at=now,
                provider=o.get("provider"),
                reason="outcome unknown: " + (o.get("error_message") or ""),
            )
            for o in chunk
        ]
    if transitions:
        await conn.execute(message_transitions.insert(), transitions)
    done_ids = [o["message_id"] for o in sent + failed]
    if not return_rows or not done_ids:
        return []
    return await _done_rows(conn, tenant_id, done_ids)


def _transitions(
    tenant_id: str, outcomes: Sequence[dict[str, Any]], to_status: str, now: dt.datetime
) -> list[dict[str, Any]]:
    """The transitions from sending of failed or requeued outcomes, with their errors."""
    return [
        transition_row(
            tenant_id,
            o["message_id"],
            "sending",
            to_status,
            at=now,
            provider=o.get("provider"),
            reason=o.get("reason"),
            error_code=o.get("error_code"),
            error_message=o.get("error_message"),
        )
        for o in outcomes
    ]


async def _record_failed(
    conn: AsyncConnection, tenant_id: str, failed: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """Failed sends: the message fails (unless a status moved it past sent), the outbox row is done."""
    m, ob = messages.c, outbox.c
    ids = [o["message_id"] for o in failed]
    codes = {
        o["message_id"]: clip(str(o["error_code"]), ERROR_CODE_LEN)
        if o.get("error_code") is not None
        else None
        for o in failed
    }
    texts = {o["message_id"]: o.get("error_message") for o in failed}
    providers = {o["message_id"]: o.get("provider") for o in failed}
    await conn.execute(
        messages.update()
        .where(m.tenant_id == tenant_id, m.id.in_(ids))
        .values(
            provider=_case(providers, m.provider, m.id),
            status=sa.case((m.status.in_(("queued", "sending", "sent")), "failed"), else_=m.status),
            error_code=_case(codes, m.error_code, m.id),
            error_message=_case(texts, m.error_message, m.id),
            failed_at=sa.func.coalesce(m.failed_at, now),
            updated_at=now,
        )
    )
    await conn.execute(
        _outbox_rows(tenant_id, ids).values(
            state="done",
            route_provider=_case(providers, ob.route_provider, ob.message_id),
            route_reason=_outbox_case(failed, "route_reason", lambda o: clip(o.get("reason"), 255)),
            last_error=_case({i: f"{codes[i]}: {texts[i]}" for i in ids}, ob.last_error, ob.message_id),
            updated_at=now,
        )
    )


async def _record_again(
    conn: AsyncConnection, tenant_id: str, again: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """Retries and deferrals: back to queued, due at their ``next_attempt_at``."""
    m, ob = messages.c, outbox.c
    ids = [o["message_id"] for o in again]
    deferred = [o["message_id"] for o in again if o["kind"] == "defer"]
    await conn.execute(
        messages.update()
        .where(m.tenant_id == tenant_id, m.id.in_(ids), m.status == "sending")
        .values(status="queued", updated_at=now)
    )
    await conn.execute(
        _outbox_rows(tenant_id, ids).values(
            state="queued",
            claimed_by=None,
            next_attempt_at=_outbox_case(again, "next_attempt_at", lambda o: o["next_attempt_at"]),
            # Pacing is not an attempt: give back the one the claim counted.
            attempts=sa.case((ob.message_id.in_(deferred or ["-"]), ob.attempts - 1), else_=ob.attempts),
            last_error=_outbox_case(again, "last_error", lambda o: clip(o.get("reason"), 2000)),
            updated_at=now,
        )
    )


async def _record_unknown(
    conn: AsyncConnection, tenant_id: str, unknown: Sequence[dict[str, Any]], now: dt.datetime
) -> None:
    """Outcome unknown (no answer): the outbox row waits to be confirmed or sent again."""
    ids = [o["message_id"] for o in unknown]
    await conn.execute(
        _outbox_rows(tenant_id, ids).values(
            state="unknown",
            claimed_by=None,
            next_attempt_at=_outbox_case(unknown, "next_attempt_at", lambda o: o["next_attempt_at"]),
            route_provider=_outbox_case(unknown, "route_provider", lambda o: o.get("provider")),
            route_reason=_outbox_case(unknown, "route_reason", lambda o: clip(o.get("reason"), 255)),
            last_error=_outbox_case(unknown, "last_error", lambda o: o.get("error_message")),
            updated_at=now,
        )
    )


async def _done_rows(conn: AsyncConnection, tenant_id: str, done_ids: list[str]) -> list[dict[str, Any]]:
    """The message rows (with ``wa_id``) of these ids."""
    m = messages.c
    out: list[dict[str, Any]] = []
    for chunk in _chunks(done_ids, 500):
        result = await conn.execute(
            sa.select(messages, conversations.c.wa_id)
            .join(conversations, conversations.c.id == m.conversation_id)
            .where(m.tenant_id == tenant_id, m.id.in_(list(chunk)))
        )
        out += [dict(r._mapping) for r in result]
    return out


async def unmatched_status_ids(
    conn: AsyncConnection, tenant_id: str, provider_message_ids: Iterable[str]
) -> list[str]:
    """Which of these provider ids have status facts stored before their message knew its id."""
    pmids = [p for p in provider_message_ids if p]
    if not pmids:
        return []
    result = await conn.execute(
        sa.select(message_statuses.c.provider_message_id)
        .where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.message_id.is_(None),
            message_statuses.c.provider_message_id.in_(pmids),
        )
        .distinct()
    )
    return [r[0] for r in result]


__all__ = [
    "REQUESTED_PROVIDERS",
    "STATES",
    "bring_forward",
    "claim",
    "claims_of",
    "due_tenants",
    "enqueue",
    "enqueue_many",
    "expire_leases",
    "find_by_idempotency_key",
    "find_cloud_confirmation",
    "find_web_confirmation",
    "get_outbox",
    "get_settings",
    "last_status_at",
    "latest_inbound",
    "list_transitions",
    "list_unknown",
    "message_transitions",
    "messages_by_ids",
    "messaging_settings",
    "next_due_at",
    "orphan_status_message_ids",
    "outbox",
    "pending_counts",
    "record_outcomes",
    "record_sent",
    "release_claims",
    "requeue",
    "requeue_unknown",
    "route_reasons",
    "save_settings",
    "status_delays",
    "to_unknown",
    "unmatched_status_ids",
]
