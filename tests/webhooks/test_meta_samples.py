"""Meta's documented webhook payloads, one per inbound message type (tests/webhooks/samples/*.json,
each citing where it comes from: Meta's reference pages, public libraries' fixtures), delivered
signed to the real app: the stored row (normalized content, Meta's object verbatim in ``raw``, the
sender's BSUID), its conversation (address, BSUID, username, name), the published
``message.received``, and that a second delivery changes nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from control_plane.webhooks.payload import _MODELED_TOP, unmodeled

pytestmark = [pytest.mark.timeout(60), pytest.mark.smoke]
SAMPLES = sorted((Path(__file__).parent / "samples").glob("*.json"))
# Reactions, edits and revokes change the message they refer to (another module covers them).
TYPES = {
    "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive",
    "button", "order", "system", "unsupported",
}  # fmt: skip


def _sample(path: Path) -> dict[str, Any]:
    sample = json.loads(path.read_text())
    assert sample["sources"] and all(s.startswith("https://") for s in sample["sources"]), path.name
    return sample


def for_tenant(payload: dict[str, Any], tenant: dict[str, Any]) -> dict[str, Any]:
    """The sample addressed to the tenant's number (its WABA and phone_number_id)."""
    payload = copy.deepcopy(payload)
    for entry in payload["entry"]:
        entry["id"] = tenant["waba"]
        for change in entry["changes"]:
            change["value"]["metadata"]["phone_number_id"] = tenant["pnid"]
    return payload


def stored(db_rows, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's messages joined to their conversations' contact columns."""
    return db_rows(
        "SELECT m.*, c.wa_id AS c_wa_id, c.bsuid AS c_bsuid, c.username AS c_username, "
        "c.contact_name AS c_name, c.unread_count AS c_unread FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.tenant_id = :t ORDER BY m.created_at",
        t=tenant_id,
    )


def snapshot(db_rows, published, tenant_id: str) -> tuple[Any, ...]:
    convs = db_rows("SELECT * FROM conversations WHERE tenant_id = :t ORDER BY id", t=tenant_id)
    return stored(db_rows, tenant_id), convs, published(tenant_id)


def test_the_samples_cover_every_inbound_type():
    kinds = {_sample(p)["expect"]["type"] for p in SAMPLES}
    assert kinds == TYPES
    names = {p.stem for p in SAMPLES}
    assert {"voice", "interactive_call_permission_reply", "referral", "bsuid_username_only"} <= names


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
async def test_meta_sample_is_stored_and_published_once(path, business_tenant, sender, db_rows, published):
    sample = _sample(path)
    expect = sample["expect"]
    tenant = await business_tenant()
    send = sender(tenant)
    payload = for_tenant(sample["payload"], tenant)
    [message] = payload["entry"][0]["changes"][0]["value"]["messages"]

    delivery = await send.send(payload)
    assert delivery.status == 200, delivery.text
    [row] = stored(db_rows, tenant["id"])
    assert (row["type"], row["direction"], row["provider"]) == (expect["type"], "inbound", "business_api")
    assert row["provider_message_id"] == message["id"]
    assert json.loads(row["content"]) == expect["content"]
    if unmodeled(message, message["type"]):
        assert json.loads(row["raw"]) == message  # Meta's object, verbatim
    else:  # every field is in the content and the columns: not stored twice
        assert row["raw"] is None and set(message) <= {*_MODELED_TOP, message["type"]}
    assert row["provider_user_id"] == expect["bsuid"]
    assert (row["c_wa_id"], row["c_bsuid"], row["c_username"], row["c_name"]) == (
        expect["wa_id"],
        expect["bsuid"],
        expect["username"],
        expect["contact_name"],
    )
    [event] = published(tenant["id"], "message.received")
    data = event["data"]
    assert data["content"] == expect["content"] and data["type"] == expect["type"]
    assert data["from"] == expect["wa_id"] and data["conversation_id"] == row["conversation_id"]
    assert data["provider_message_id"] == message["id"] and data["message_id"] == row["id"]
    # The message shape's provider_user_id (its builder comes with the shape work): the BSUID when there.
    assert data.get("provider_user_id", expect["bsuid"]) == expect["bsuid"]

    before = snapshot(db_rows, published, tenant["id"])
    again = await send.send(payload)
    assert again.status == 200, again.text
    assert snapshot(db_rows, published, tenant["id"]) == before
