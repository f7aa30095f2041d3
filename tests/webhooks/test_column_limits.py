"""No silent truncation on the Cloud road, column by column: every provider id a webhook (or the Graph
API's template list) can put in a column is stored whole, up to the column's length (512 characters
for ids, migration 0011), and one past it is refused (its item skipped and counted), never cut. The
good parts of the same delivery are stored all the same.

``CASES``: (column, how it is reached, the over-long value, the expected outcome). Each runs on
MariaDB (strict mode: a value past its column would fail the insert, not be cut) and, marked smoke,
on SQLite. The two defects of issue 15 are the first cases: wamids over 128 characters were cut (two
such ids sharing their first 128 characters were one message) and a 200-digit sender was dropped."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.db.conversations import CONTACT_ID_LEN
from control_plane.db.messages import PROVIDER_ID_LEN
from control_plane.db.templates import TEMPLATE_NAME_LEN
from tests.fakes import graph_api as g

pytestmark = pytest.mark.timeout(60)
USER = "16505551234"


def _wamid(length: int, tail: str = "") -> str:
    """A wamid-shaped id of exactly ``length`` characters ending in ``tail``."""
    head = "wamid." + secrets.token_hex(4)
    return head + "A" * (length - len(head) - len(tail)) + tail


@dataclass(frozen=True)
class Case:
    column: str  # table.column
    reached_by: str
    run: Callable[..., Awaitable[None]]

    def __str__(self) -> str:
        return self.column


async def _two_long_wamids(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    a, b = _wamid(300, "-1"), _wamid(300, "-2")  # the same first 298 characters
    a = b[:-2] + "-1"
    resp = await send.inbound(
        tenant["pnid"], g.text_message(USER, "a", wamid=a), g.text_message(USER, "b", wamid=b)
    )
    assert resp.status == 200, resp.text
    stored = rows("SELECT provider_message_id FROM messages WHERE tenant_id = :t", t=tenant["id"])
    assert sorted(r["provider_message_id"] for r in stored) == sorted([a, b])  # two messages, ids whole


async def _long_sender(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    sender = "1" * 200
    resp = await send.inbound(tenant["pnid"], g.text_message(sender, "from far away"))
    assert resp.status == 200, resp.text
    (conv,) = rows("SELECT wa_id FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv["wa_id"] == sender
    (event,) = ctx["published"](tenant["id"], "message.received")
    assert event["data"]["from"] == sender


async def _long_status(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    wamid, recipient = _wamid(PROVIDER_ID_LEN), "2" * CONTACT_ID_LEN
    payload = g.messages_payload(
        tenant["waba"], tenant["pnid"], statuses=[g.status(wamid, "delivered", recipient)]
    )
    assert (await send.send(payload)).status == 200
    (row,) = rows(
        "SELECT provider_message_id, recipient_id FROM message_statuses WHERE tenant_id = :t", t=tenant["id"]
    )
    assert (row["provider_message_id"], row["recipient_id"]) == (wamid, recipient)


async def _long_reaction(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    target, reaction, actor = _wamid(400, "t"), _wamid(PROVIDER_ID_LEN, "r"), "3" * 300
    resp = await send.inbound(
        tenant["pnid"], g.reaction_message(actor, target, "\N{THUMBS UP SIGN}", wamid=reaction)
    )
    assert resp.status == 200, resp.text
    (row,) = rows(
        "SELECT provider_change_id, target_provider_message_id, actor FROM message_changes "
        "WHERE tenant_id = :t",
        t=tenant["id"],
    )
    assert (row["provider_change_id"], row["target_provider_message_id"], row["actor"]) == (
        reaction,
        target,
        actor,
    )


async def _long_preference(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    wa_id = "4" * 40  # was cut to 32 characters (contact_preferences.wa_id)
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": tenant["pnid"]},
        "contacts": [{"wa_id": wa_id, "profile": {"name": "Far"}}],
        "user_preferences": [
            {"wa_id": wa_id, "detail": "User requested to stop marketing messages",
             "category": "marketing_messages", "value": "stop", "timestamp": 1731705721}
        ],
    }  # fmt: skip
    payload = g.envelope([g.entry(tenant["waba"], [g.change(value, "user_preferences")])])
    assert (await send.send(payload)).status == 200
    (row,) = rows("SELECT wa_id, value FROM contact_preferences WHERE tenant_id = :t", t=tenant["id"])
    assert (row["wa_id"], row["value"]) == (wa_id, "stop")


async def _long_entry_id(ctx: dict[str, Any]) -> None:
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    entry_id = "5" * 300  # routed by its phone_number_id; the entry id kept whole
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": tenant["pnid"]},
        "calls": [{"id": "wacid.X", "event": "connect", "from": USER, "to": "15550783881",
                   "timestamp": "1731705721", "direction": "USER_INITIATED"}],
    }  # fmt: skip
    payload = g.envelope([g.entry(entry_id, [g.change(value, "calls")])])
    assert (await send.send(payload)).status == 200
    (row,) = rows("SELECT entry_id FROM provider_events WHERE tenant_id = :t", t=tenant["id"])
    assert row["entry_id"] == entry_id


async def _long_template_name(ctx: dict[str, Any]) -> None:
    tenant, fake, client, rows = ctx["tenant"], ctx["fake"], ctx["client"], ctx["rows"]
    whole = "t" * TEMPLATE_NAME_LEN  # Meta allows 512 characters; the column held 255
    fake.add_template(tenant["waba"], whole, "en_US")
    fake.add_template(tenant["waba"], "x" * (TEMPLATE_NAME_LEN + 1), "en_US")  # past it: refused, not cut
    resp = await client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    names = [r["name"] for r in rows("SELECT name FROM templates WHERE tenant_id = :t", t=tenant["id"])]
    assert names == [whole]


async def _ids_past_the_column(ctx: dict[str, Any]) -> None:
    """One character more than the column: the item is refused (skipped, counted), never cut; the
    good message of the same delivery is stored."""
    tenant, send, rows = ctx["tenant"], ctx["send"], ctx["rows"]
    good = g.text_message(USER, "good")
    long_id = g.text_message(USER, "long id", wamid=_wamid(PROVIDER_ID_LEN + 1))
    long_sender = g.text_message("6" * (CONTACT_ID_LEN + 1), "long sender")
    status = g.status(_wamid(PROVIDER_ID_LEN + 1), "read", USER)
    payload = send.inbound_payload(tenant["pnid"], good, long_id, long_sender)
    payload["entry"][0]["changes"][0]["value"]["statuses"] = [status]
    resp = await send.send(payload)
    assert resp.status == 200, resp.text
    assert [
        r["content"] for r in rows("SELECT content FROM messages WHERE tenant_id = :t", t=tenant["id"])
    ] == [json.dumps({"text": "good"}, separators=(",", ":"))]
    assert rows("SELECT id FROM message_statuses WHERE tenant_id = :t", t=tenant["id"]) == []
    assert ctx["client"].server.app["webhook_counters"].skipped_items >= 3


CASES = [
    Case("messages.provider_message_id", "webhook messages[].id (two 300-char wamids)", _two_long_wamids),
    Case("conversations.wa_id", "webhook messages[].from (200 digits)", _long_sender),
    Case("message_statuses.provider_message_id+recipient_id", "webhook statuses[] (512 each)", _long_status),
    Case("message_changes.*_id+actor", "webhook reaction (ids 400/512, actor 300)", _long_reaction),
    Case("contact_preferences.wa_id", "webhook user_preferences (40 digits)", _long_preference),
    Case("provider_events.entry_id", "webhook entry.id of a calls change (300)", _long_entry_id),
    Case("templates.name", "Graph API template list (512; 513 refused)", _long_template_name),
    Case("past every id column", "webhook ids of 513 characters: refused", _ids_past_the_column),
]


@pytest.mark.smoke
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_provider_values_are_stored_whole_or_refused(
    case, app_client, fake, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    ctx = {
        "tenant": tenant,
        "send": sender(tenant),
        "rows": db_rows,
        "published": published,
        "fake": fake,
        "client": app_client,
    }
    await case.run(ctx)
