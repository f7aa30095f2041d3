"""Status facts from the providers (Meta's statuses, the Web session's acks): recorded once per
(tenant, provider message id, status), and applied to their messages up the ladder, never back
(``control_plane/statuses.py``; the UPDATE enforces it too: ``messages.guarded_update``).

A fact whose message is not known yet (a status that beat the record of its send) is stored with
``message_id`` NULL; ``apply_recorded_statuses`` applies it once the message learns its wamid.

Both return the messages as their events need them (``events.message_data``): the row, its content
decoded, its contact (``wa_id``, ``contact_name``) and the Web session's number (``own_number``),
read by the same statement that finds (and locks) the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import clip, conversations, insert_ignore
from control_plane.db.engine import utcnow
from control_plane.db.messages import (
    dump_json,
    load_json,
    message_statuses,
    messages,
    move_up,
)
from control_plane.db.metadata import ERROR_CODE_LEN
from control_plane.db.sessions import session_state
from control_plane.statuses import STATUS_RANK, status_rank

Fresh = dict[tuple[str, str], dict[str, Any]]  # (provider message id, status) -> the update


async def apply_status_updates(
    conn: AsyncConnection, tenant_id: str, updates: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Record status facts once per (tenant, provider_message_id, status) and move their messages up
    the ladder (never back). Each update: ``provider``, ``provider_message_id``, ``status``,
    ``occurred_at``, optional ``recipient_id``, ``error_code``, ``error_message``, ``raw`` (JSON-able),
    ``business_number`` (the business's number, as the provider reported it).

    Returns one dict per newly recorded fact whose message is known: ``message_id``,
    ``conversation_id``, ``provider``, ``provider_message_id``, ``status`` (this fact), ``message_status``
    (the message's status afterwards), ``changed`` (the status moved), ``occurred_at``, ``error_code``,
    ``error_message``, ``recipient_id``, ``message`` (the message after it: see the module docstring)
    and ``business_number`` (the update's, else the Web session's number). Facts for a wamid with no
    message yet are stored with ``message_id`` NULL; ``apply_recorded_statuses`` applies them once the
    message learns its wamid.
    """
    fresh: Fresh = {}
    for upd in updates:
        if upd.get("status") not in STATUS_RANK:
            continue
        fresh.setdefault((upd["provider_message_id"], upd["status"]), upd)
    if not fresh or not await _drop_recorded(conn, tenant_id, fresh):
        return []
    known = await _lock_messages(conn, tenant_id, fresh)
    now = utcnow()
    per_message: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for (pmid, status), upd in sorted(fresh.items()):
        msg = known.get((upd["provider"], pmid))
        rows.append(_fact_row(tenant_id, msg["id"] if msg else None, pmid, status, upd, now))
        if msg:
            per_message.setdefault(msg["id"], []).append(upd)
    await conn.execute(insert_ignore(conn, message_statuses), rows)
    by_id = {m["id"]: m for m in known.values()}
    out: list[dict[str, Any]] = []
    for message_id, upds in per_message.items():
        out += await _move_message(conn, tenant_id, by_id[message_id], upds, now)
    return out


async def _drop_recorded(conn: AsyncConnection, tenant_id: str, fresh: Fresh) -> bool:
    """Forget the facts recorded before; whether any is left."""
    pmids = sorted({k[0] for k in fresh})
    result = await conn.execute(
        sa.select(message_statuses.c.provider_message_id, message_statuses.c.status).where(
            message_statuses.c.tenant_id == tenant_id, message_statuses.c.provider_message_id.in_(pmids)
        )
    )
    for pmid, status in result:
        fresh.pop((pmid, status), None)
    return bool(fresh)


async def _lock_messages(
    conn: AsyncConnection, tenant_id: str, fresh: Fresh
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """The facts' messages by (provider, provider message id), read with a lock (MariaDB): another
    transaction moving these messages commits first, and we read what it left (the unique index
    (tenant, provider, wamid) finds, and locks, just these rows)."""
    pmids = sorted({k[0] for k in fresh})
    providers = sorted({upd["provider"] for upd in fresh.values()})
    result = await conn.execute(
        _select_messages()
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.provider.in_(providers),
            messages.c.provider_message_id.in_(pmids),
        )
        .order_by(messages.c.provider, messages.c.provider_message_id)
        .with_for_update()
    )
    known: dict[tuple[str | None, str], dict[str, Any]] = {}
    for row in result:
        m = _message_row(row)
        known[(m["provider"], m["provider_message_id"])] = m
    return known


def _select_messages() -> sa.Select[Any]:
    """Messages with their contact and the Web session's number: scalar subqueries, which a locking
    read does not lock (a JOIN would lock the conversation rows as well)."""
    conv, m = conversations.c, messages.c
    return sa.select(
        messages,
        sa.select(conv.wa_id).where(conv.id == m.conversation_id).scalar_subquery().label("wa_id"),
        sa.select(conv.contact_name)
        .where(conv.id == m.conversation_id)
        .scalar_subquery()
        .label("contact_name"),
        sa.select(session_state.c.own_number)
        .where(session_state.c.tenant_id == m.tenant_id)
        .scalar_subquery()
        .label("own_number"),
    )


def _message_row(row: Any) -> dict[str, Any]:
    m = dict(row._mapping)
    m["content"] = load_json(m["content"])
    return m


def _business_number(msg: dict[str, Any], upd: dict[str, Any]) -> str | None:
    """The business's number for a status event: the provider's (Cloud: the webhook's display number),
    else the Web session's own number."""
    number: str | None = upd.get("business_number")
    if number is None and msg["provider"] == "web":
        number = msg.get("own_number")
    return number


def _fact_row(
    tenant_id: str, message_id: str | None, pmid: str, status: str, upd: dict[str, Any], now: Any
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "message_id": message_id,
        "provider": upd["provider"],
        "provider_message_id": pmid,
        "status": status,
        "occurred_at": upd.get("occurred_at"),
        "recipient_id": upd.get("recipient_id"),  # digits or a BSUID, whole (parsers refuse longer)
        "error_code": clip(str(upd["error_code"]), ERROR_CODE_LEN)
        if upd.get("error_code") is not None
        else None,
        "error_message": upd.get("error_message"),
        "raw": dump_json(upd["raw"]) if upd.get("raw") is not None else None,
        "created_at": now,
    }


async def _move_message(
    conn: AsyncConnection, tenant_id: str, msg: dict[str, Any], upds: list[dict[str, Any]], now: Any
) -> list[dict[str, Any]]:
    """Apply one message's new facts; one result per fact (see ``apply_status_updates``)."""
    upds.sort(key=lambda u: status_rank(u["status"]))
    before = msg["status"]
    await move_up(conn, tenant_id, msg, upds, now=now)
    return [
        {
            "message_id": msg["id"],
            "conversation_id": msg["conversation_id"],
            "provider": msg["provider"],
            "provider_message_id": msg["provider_message_id"],
            "status": upd["status"],
            "message_status": msg["status"],
            "changed": msg["status"] != before and msg["status"] == upd["status"],
            "occurred_at": upd.get("occurred_at"),
            "recipient_id": upd.get("recipient_id"),
            "error_code": upd.get("error_code"),
            "error_message": upd.get("error_message"),
            "message": msg,
            "business_number": _business_number(msg, upd),
        }
        for upd in upds
    ]


async def apply_recorded_statuses(
    conn: AsyncConnection, tenant_id: str, message_id: str
) -> dict[str, Any] | None:
    """Apply status facts that arrived before the message knew its provider id (a webhook racing the
    send response). Call after setting ``provider``/``provider_message_id``. Returns the row (see the
    module docstring)."""
    result = await conn.execute(
        _select_messages().where(messages.c.tenant_id == tenant_id, messages.c.id == message_id)
    )
    found = result.first()
    msg = _message_row(found) if found is not None else None
    if msg is None or not msg["provider_message_id"]:
        return msg
    result = await conn.execute(
        sa.select(message_statuses).where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.provider_message_id == msg["provider_message_id"],
            message_statuses.c.provider == msg["provider"],
        )
    )
    facts = [dict(r._mapping) for r in result]
    if not facts:
        return msg
    await conn.execute(
        message_statuses.update()
        .where(
            message_statuses.c.tenant_id == tenant_id,
            message_statuses.c.provider_message_id == msg["provider_message_id"],
            message_statuses.c.message_id.is_(None),
        )
        .values(message_id=message_id)
    )
    facts.sort(key=lambda f: status_rank(f["status"]))
    await move_up(conn, tenant_id, msg, facts)
    return msg
