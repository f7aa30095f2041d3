"""``db.message_changes`` below the inbound service: the MariaDB look for waiting changes
(``pending_targets_sql``, written out with literals) answers like its Core twin (``waiting_changes``)
for awkward ids, other providers and other tenants; one UPDATE moves several messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.db import inbound as inbound_db
from control_plane.db import message_changes as changes_db
from control_plane.db import sql
from control_plane.db import tenants as tenants_db
from control_plane.db.messages import get_message_by_provider_id

ODD = "wamid.'ü\\\"; --😀"


def _message(pmid: str, provider: str = "business_api") -> dict[str, Any]:
    return {"provider": provider, "provider_message_id": pmid, "wa_id": "16505551234", "type": "text",
            "content": {"text": pmid}, "provider_timestamp": None}  # fmt: skip


def _change(pmid: str, target: str, kind: str = "reaction", provider: str = "business_api", **kw: Any):
    return {"provider": provider, "provider_message_id": pmid, "target_provider_message_id": target,
            "kind": kind, "actor": "16505551234", "emoji": "x", **kw}  # fmt: skip


@pytest.mark.mariadb
async def test_the_written_out_look_matches_its_core_twin(db):
    async with db.begin() as conn:
        tid, other = [(await tenants_db.create_tenant(conn, f"changes {i}"))["id"] for i in range(2)]
    async with db.begin() as conn:
        assert sql.raw_mariadb(conn)
        await changes_db.record_changes(
            conn, tid, [_change("c1", ODD), _change("c2", "plain", provider="web")]
        )
        await changes_db.record_changes(conn, other, [_change("c3", "elsewhere")])
    cases = [
        ([_message(ODD)], True),
        ([_message("plain", "web")], True),
        ([_message("plain")], False),  # the same id on the other road
        ([_message("elsewhere")], False),  # another tenant's change
        ([_message("nothing"), _message("plain", "web")], True),
    ]
    for stored, waiting in cases:
        async with db.begin() as conn:
            assert await changes_db.may_be_waiting(conn, tid, stored, before=[]) is waiting, stored
        with sql.core_paths():
            async with db.begin() as conn:
                assert bool(await changes_db.waiting_changes(conn, tid, stored)) is waiting, stored


@pytest.mark.smoke
async def test_pending_changes_apply_to_several_messages_in_one_batch(db):
    async with db.begin() as conn:
        tid = (await tenants_db.create_tenant(conn, "changes"))["id"]
    async with db.begin() as conn:
        await changes_db.record_changes(
            conn,
            tid,
            [
                _change("e1", "m1", kind="edit", text="m1 edited"),
                _change("r1", "m2", emoji="\N{FIRE}"),
                _change("v1", "m3", kind="revoke"),
                _change("e2", "m1", kind="edit", text="m1 edited twice"),
            ],
        )
    async with db.begin() as conn:
        rows = await inbound_db.record_inbound_messages(
            conn, tid, [_message(p) for p in ("m1", "m2", "m3", "m4")]
        )
        results = await changes_db.apply_pending(conn, tid, rows)
    assert [(r["kind"], r["message"]["provider_message_id"]) for r in results] == [
        ("edit", "m1"), ("reaction", "m2"), ("revoke", "m3"), ("edit", "m1"),
    ]  # fmt: skip
    assert results[0]["message"]["content"] == {"text": "m1 edited"}  # each result: the state it left
    assert results[3]["previous_content"] == {"text": "m1 edited"}
    async with db.connect() as conn:
        m1, m2, m3, m4 = [
            await get_message_by_provider_id(conn, tid, "business_api", p) for p in ("m1", "m2", "m3", "m4")
        ]
        history = [await changes_db.list_message_changes(conn, tid, r["id"]) for r in rows]
    assert [[h["kind"] for h in hs] for hs in history] == [["edit", "edit"], ["reaction"], ["revoke"], []]
    assert json.loads(m1["content"]) == {"text": "m1 edited twice"} and m1["edited_at"] is not None
    assert changes_db.decode_reactions(m2["reactions"])[0]["emoji"] == "\N{FIRE}"
    assert json.loads(m3["content"]) is None and m3["deleted_at"] is not None
    assert m4["edited_at"] is None and m4["deleted_at"] is None and m4["reactions"] is None
    assert history[0][1]["payload"] == {
        "content": {"text": "m1 edited twice"},
        "previous_content": {"text": "m1 edited"},
    }
