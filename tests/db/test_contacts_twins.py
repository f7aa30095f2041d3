"""Contacts by phone number, by BSUID or both, through ``record_inbound_messages``: the written-out
MariaDB statements and their SQLAlchemy Core twins (``sql.core_paths()``) leave the same rows
(conversations' BSUID and username, messages' provider_user_id and raw, the merges) for the same
deliveries; a redelivery changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane.db import inbound as inbound_db
from control_plane.db import sql
from control_plane.db import tenants as tenants_db
from control_plane.db.messages import conversations, messages

pytestmark = pytest.mark.mariadb
PHONE, BSUID, OTHER = "4915100000001", "DE.13491208655302741918", "DE.ENT.99"
T0 = dt.datetime(2026, 5, 1, 10, 0, 0)


def _item(n: int, *, phone: str | None, bsuid: str | None, username: str | None = None) -> dict[str, Any]:
    raw = {"id": f"wamid.{n}=", "timestamp": "1777629600", "type": "text", "text": {"body": f"m{n} 'ü'"}}
    if phone:
        raw["from"] = phone
    if bsuid:
        raw["from_user_id"] = bsuid
    return {
        "provider": "business_api",
        "provider_message_id": raw["id"],
        "wa_id": phone or bsuid,
        "bsuid": bsuid,
        "username": username,
        "type": "text",
        "content": {"text": raw["text"]["body"]},
        "raw": raw,
        "provider_timestamp": T0 + dt.timedelta(seconds=n),
        "contact_name": "Ana",
    }


# A username user writes (BSUID only), an old client by number, then a message naming both (merge),
# then the BSUID alone again, a second contact by BSUID only, and a redelivery of everything.
DELIVERIES = [
    [_item(0, phone=None, bsuid=BSUID, username="@ana")],
    [_item(1, phone=PHONE, bsuid=None)],
    [_item(2, phone=PHONE, bsuid=BSUID, username="@ana"), _item(3, phone=None, bsuid=BSUID)],
    [_item(4, phone=None, bsuid=OTHER)],
]
DELIVERIES.append([i for d in DELIVERIES for i in d])


async def _run(db: Any, tenant_id: str) -> tuple[list[Any], list[Any]]:
    stored, merges = [], []
    for n, items in enumerate(DELIVERIES):
        async with db.begin() as conn:
            assert sql.raw_mariadb(conn) != sql.core_only()
            merged: list[dict[str, Any]] = []
            rows = await inbound_db.record_inbound_messages(conn, tenant_id, items, merged=merged)
        stored.append([(r["provider_message_id"], r["wa_id"], r["provider_user_id"]) for r in rows])
        merges.append([(n, m["wa_id"], m["bsuid"]) for m in merged])
    return stored, merges


async def _state(db: Any, tenant_id: str) -> tuple[list[Any], list[Any]]:
    c, m = conversations.c, messages.c
    async with db.connect() as conn:
        convs = {
            r.id: r
            for r in await conn.execute(
                sa.select(c.id, c.wa_id, c.bsuid, c.username, c.contact_name, c.unread_count).where(
                    c.tenant_id == tenant_id
                )
            )
        }
        msgs = await conn.execute(
            sa.select(m.provider_message_id, m.conversation_id, m.provider_user_id, m.raw).where(
                m.tenant_id == tenant_id
            )
        )
        msg_rows = sorted((r[0], convs[r[1]].wa_id, r[2], json.loads(r[3])) for r in msgs)
    return sorted(tuple(r)[1:] for r in convs.values()), msg_rows


async def test_contacts_core_twin_matches_the_fast_path(db):
    async with db.begin() as conn:
        fast_tenant, core_tenant = [(await tenants_db.create_tenant(conn, f"c{i}"))["id"] for i in range(2)]
    fast = await _run(db, fast_tenant)
    with sql.core_paths():
        core = await _run(db, core_tenant)
    assert fast == core
    stored, merges = fast
    assert merges == [[], [], [(2, PHONE, BSUID)], [], []]
    assert stored[2] == [("wamid.2=", PHONE, BSUID), ("wamid.3=", PHONE, BSUID)]
    assert stored[4] == []  # the redelivery
    convs, msgs = await _state(db, fast_tenant)
    assert convs == [(PHONE, BSUID, "@ana", "Ana", 4), (OTHER, OTHER, None, "Ana", 1)]
    assert [(pmid, wa, user) for pmid, wa, user, _ in msgs] == [
        ("wamid.0=", PHONE, BSUID),
        ("wamid.1=", PHONE, None),
        ("wamid.2=", PHONE, BSUID),
        ("wamid.3=", PHONE, BSUID),
        ("wamid.4=", OTHER, OTHER),
    ]
    assert msgs[0][3] == DELIVERIES[0][0]["raw"]
    assert await _state(db, core_tenant) == (convs, msgs)
