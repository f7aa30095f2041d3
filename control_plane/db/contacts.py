"""Contacts known by phone number, by business-scoped user id (BSUID), or both: which conversation
an inbound message from a BSUID belongs to, and merging when Meta tells us both.

A conversation's ``wa_id`` is its address: the phone number's digits when known, else the BSUID
(``conversations.bsuid`` keeps the BSUID either way). For the BSUIDs of a batch of inbound items
(``resolve_contacts``, inside the writer's transaction, before the conversations upsert):

- phone and BSUID, a BSUID-only conversation exists and the phone number's too: the BSUID-only one
  is merged into the phone number's (its messages moved, counts added, times kept the latest, the
  row removed) and a ``conversation.merged`` is reported;
- phone and BSUID, only the BSUID-only conversation exists: it takes the phone number as its address
  (it keeps its id; nothing else changes);
- BSUID only: the conversation that knows the BSUID (the phone number's when there is one);
  none: a new one addressed by the BSUID;
- a ``user_changed_user_id`` system message (``previous_bsuid``): the conversation of the old BSUID
  takes the new one.

The upsert that follows (``upsert_conversations``, ``inbound_sql.upsert_conversations_sql``) writes
the BSUID and username onto the addressed conversation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import conversations
from control_plane.db.engine import utcnow
from control_plane.db.messages import messages

Merge = dict[str, Any]  # {conversation_id, merged_conversation_id, wa_id, bsuid}: conversation.merged


def needs_resolution(items: Iterable[dict[str, Any]]) -> bool:
    """Whether any item names its sender by BSUID (only those need ``resolve_contacts``)."""
    return any(item.get("bsuid") or item.get("previous_bsuid") for item in items)


async def resolve_contacts(
    conn: AsyncConnection, tenant_id: str, items: Iterable[dict[str, Any]], merged: list[Merge] | None = None
) -> dict[str, str]:
    """The conversation address of each BSUID the items name (see the module docstring), after the
    merges, re-addressings and renames they call for (appended to ``merged``: the merges)."""
    phones: dict[str, str | None] = {}  # BSUID -> the phone number Meta gave with it
    renames: dict[str, str] = {}  # old BSUID -> new BSUID
    for item in items:
        bsuid = item.get("bsuid")
        if item.get("previous_bsuid") and bsuid:
            renames[item["previous_bsuid"]] = bsuid
        if bsuid:
            phone = item["wa_id"] if item["wa_id"] != bsuid else None
            if phone or bsuid not in phones:
                phones[bsuid] = phone
    if not phones and not renames:
        return {}
    for old, new in renames.items():
        await _rename(conn, tenant_id, old, new)
    known = await _conversations(conn, tenant_id, phones)
    addresses: dict[str, str] = {}
    for bsuid, phone in sorted(phones.items()):  # one lock order for every writer
        addresses[bsuid] = await _address(conn, tenant_id, known, bsuid, phone, merged)
    return addresses


async def _conversations(
    conn: AsyncConnection, tenant_id: str, phones: dict[str, str | None]
) -> list[dict[str, Any]]:
    """The conversations these BSUIDs and phone numbers may name, locked (MariaDB) until commit."""
    c = conversations.c
    keys = sorted({*phones, *(p for p in phones.values() if p)})
    result = await conn.execute(
        sa.select(conversations)
        .where(c.tenant_id == tenant_id, sa.or_(c.wa_id.in_(keys), c.bsuid.in_(sorted(phones))))
        .order_by(c.id)
        .with_for_update()
    )
    return [dict(r._mapping) for r in result]


async def _address(
    conn: AsyncConnection,
    tenant_id: str,
    known: list[dict[str, Any]],
    bsuid: str,
    phone: str | None,
    merged: list[Merge] | None,
) -> str:
    by_wa_id = {c["wa_id"]: c for c in known}
    alone = by_wa_id.get(bsuid)  # the BSUID-only conversation
    if phone is None:
        # The phone number's conversation that knows this BSUID, else the BSUID's own.
        with_phone = [c for c in known if c["bsuid"] == bsuid and c["wa_id"] != bsuid]
        return with_phone[0]["wa_id"] if with_phone else bsuid
    if alone is not None:
        keep = by_wa_id.get(phone)
        if keep is None:
            await _readdress(conn, tenant_id, alone, phone)
        else:
            await merge_conversations(conn, tenant_id, keep, alone)
            if merged is not None:
                merged.append(
                    {
                        "conversation_id": keep["id"],
                        "merged_conversation_id": alone["id"],
                        "wa_id": phone,
                        "bsuid": bsuid,
                    }
                )
            known.remove(alone)
    return phone


async def _readdress(conn: AsyncConnection, tenant_id: str, conv: dict[str, Any], phone: str) -> None:
    """A BSUID-only conversation learns its contact's phone number: the number becomes its address."""
    await conn.execute(
        conversations.update()
        .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conv["id"])
        .values(wa_id=phone, updated_at=utcnow())
    )
    conv["wa_id"] = phone


async def _rename(conn: AsyncConnection, tenant_id: str, old: str, new: str) -> None:
    """The user's BSUID changed (``user_changed_user_id``): conversations that knew the old one know
    the new one (a BSUID-only one is addressed by it), unless one knows the new one already."""
    c = conversations.c
    taken = await conn.execute(
        sa.select(c.id).where(c.tenant_id == tenant_id, sa.or_(c.wa_id == new, c.bsuid == new)).limit(1)
    )
    if taken.first() is not None:
        return
    now = utcnow()
    mine = c.tenant_id == tenant_id
    await conn.execute(
        conversations.update().where(mine, c.wa_id == old).values(wa_id=new, bsuid=new, updated_at=now)
    )
    await conn.execute(conversations.update().where(mine, c.bsuid == old).values(bsuid=new, updated_at=now))


async def merge_conversations(
    conn: AsyncConnection, tenant_id: str, keep: dict[str, Any], gone: dict[str, Any]
) -> None:
    """``gone``'s messages move to ``keep``, which adds its unread count, keeps the latest times and
    the names it lacks; ``gone`` is removed. Rows as read (locked) before."""
    c, m = conversations.c, messages.c
    await conn.execute(
        messages.update()
        .where(m.tenant_id == tenant_id, m.conversation_id == gone["id"])
        .values(conversation_id=keep["id"])
    )
    await conn.execute(conversations.delete().where(c.tenant_id == tenant_id, c.id == gone["id"]))
    values: dict[str, Any] = {
        "unread_count": c.unread_count + gone["unread_count"],
        "bsuid": sa.func.coalesce(c.bsuid, gone["bsuid"]),
        "username": sa.func.coalesce(c.username, gone["username"]),
        "contact_name": sa.func.coalesce(c.contact_name, gone["contact_name"]),
        "updated_at": utcnow(),
    }
    if gone["last_message_at"] is not None and (
        keep["last_message_at"] is None or gone["last_message_at"] > keep["last_message_at"]
    ):
        values.update(last_message_at=gone["last_message_at"], last_message_id=gone["last_message_id"])
    if gone["last_inbound_at"] is not None and (
        keep["last_inbound_at"] is None or gone["last_inbound_at"] > keep["last_inbound_at"]
    ):
        values["last_inbound_at"] = gone["last_inbound_at"]
    if gone["created_at"] < keep["created_at"]:
        values["created_at"] = gone["created_at"]
    await conn.execute(
        conversations.update().where(c.tenant_id == tenant_id, c.id == keep["id"]).values(**values)
    )
