"""Webhook fields other than ``messages`` (webhooks/fields.py) through the real app: Meta's documented
deliveries (tests/webhooks/samples/fields/fields.json, each with its source), signed like Meta signs them.

Each field: what the gateway stores, the event it publishes, a redelivery changes nothing, a wrong
signature stores nothing, a WABA or number no tenant holds is not stored."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from tests.fakes import graph_api as g
from tests.webhooks.samples import FIELD_SAMPLES, sample

pytestmark = pytest.mark.timeout(60)
USER = "16505551234"


def _provider_events(db_rows, tenant_id: str) -> list[dict[str, Any]]:
    return db_rows("SELECT * FROM provider_events WHERE tenant_id = :t ORDER BY id", t=tenant_id)


def _templates(db_rows, tenant_id: str) -> dict[str, dict[str, Any]]:
    rows = db_rows("SELECT * FROM templates WHERE tenant_id = :t", t=tenant_id)
    return {r["name"]: r for r in rows}


async def _sync_templates(app_client, fake, tenant) -> dict[str, str]:
    """The WABA's templates as Meta's samples name them, synced into the tenant's table; name -> id."""
    ids = {
        "order_confirmation": fake.add_template(
            tenant["waba"], "order_confirmation", "en_US", status="PENDING"
        ),
        "abandoned_cart": fake.add_template(
            tenant["waba"], "abandoned_cart", "en", status="PENDING", category="MARKETING"
        ),
        "welcome_template": fake.add_template(tenant["waba"], "welcome_template", "en_US"),
    }
    resp = await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])
    assert resp.status == 200, await resp.text()
    return ids


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.smoke
async def test_template_updates_change_the_templates_table_once(
    app_client, fake, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    ids = await _sync_templates(app_client, fake, tenant)
    send = sender(tenant)
    waba = tenant["waba"]
    deliveries = [
        sample("template_status_approved", waba=waba),  # Meta's id: found by name + language (en-US)
        sample("template_status_rejected", waba=waba),
        sample("template_quality_update", waba=waba),
        sample("template_category_pending", waba=waba, message_template_id=int(ids["welcome_template"])),
        sample("template_category_changed", waba=waba, message_template_id=int(ids["welcome_template"])),
    ]
    for payload in deliveries:
        resp = await send.send(payload)
        assert resp.status == 200, resp.text
        assert json.loads(resp.text)["notices"] == 1

    rows = _templates(db_rows, tenant["id"])
    assert rows["order_confirmation"]["status"] == "APPROVED"
    assert (
        rows["abandoned_cart"]["status"] == "REJECTED" and rows["abandoned_cart"]["category"] == "MARKETING"
    )
    assert rows["welcome_template"]["quality_score"] == "YELLOW"
    assert rows["welcome_template"]["category"] == "MARKETING"  # the completed change, found by id
    events = published(tenant["id"])
    assert _types(events) == [
        "template.status",
        "template.status",
        "template.quality",
        "template.category",
        "template.category",
    ]
    approved, rejected, quality, pending, changed = (e["data"] for e in events)
    assert approved == {
        "waba_id": waba,
        "template_id": "1689556908129832",
        "name": "order_confirmation",
        "language": "en-US",
        "status": "APPROVED",
        "reason": "NONE",
        "category": "UTILITY",
        "details": None,
        "timestamp": "2025-06-30T01:39:08.000Z",
    }
    assert rejected["details"]["rejection_info"]["recommendation"].startswith("Separate parameters")
    assert quality["quality_score"] == "YELLOW" and quality["previous_quality_score"] == "GREEN"
    assert pending["pending"] is True and pending["category"] == "UTILITY"
    assert (
        pending["correct_category"] == "MARKETING"
        and pending["category_update_at"] == "2025-05-02T07:00:00.000Z"
    )
    assert changed["pending"] is False and changed["previous_category"] == "UTILITY"
    kept = _provider_events(db_rows, tenant["id"])
    assert [r["field"] for r in kept] == [
        "message_template_status_update",
        "message_template_status_update",
        "message_template_quality_update",
        "template_category_update",
        "template_category_update",
    ]
    assert json.loads(kept[1]["value"]) == deliveries[1]["entry"][0]["changes"][0]["value"]
    assert all(r["entry_id"] == waba and r["phone_number_id"] is None for r in kept)

    # Meta redelivers (at least once): nothing changes, nothing is published again.
    for payload in deliveries:
        assert (await send.send(payload)).status == 200
    assert len(_provider_events(db_rows, tenant["id"])) == 5
    assert len(published(tenant["id"])) == 5
    resp = await app_client.get("/api/whatsapp/templates", headers=tenant["headers"])
    listed = {t["name"]: t for t in (await resp.json())["templates"]}
    assert listed["welcome_template"]["quality_score"] == "YELLOW"


async def test_quality_update_under_the_status_field_as_metas_example_prints_it(
    app_client, fake, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    await _sync_templates(app_client, fake, tenant)
    resp = await sender(tenant).send(sample("template_quality_update_as_status_field", waba=tenant["waba"]))
    assert resp.status == 200
    assert _templates(db_rows, tenant["id"])["welcome_template"]["quality_score"] == "YELLOW"
    assert _types(published(tenant["id"])) == ["template.quality"]
    assert _provider_events(db_rows, tenant["id"])[0]["field"] == "message_template_quality_update"


async def test_account_updates_reach_every_tenant_of_the_waba(business_tenant, sender, db_rows, published):
    secret = "secret-" + secrets.token_hex(8)
    first = await business_tenant(app_secret=secret)
    second = await business_tenant(app_secret=secret, waba=first["waba"])  # two numbers, one WABA
    send = sender(first)
    for name in ("account_disabled", "account_restriction", "account_violation"):
        assert (await send.send(sample(name, waba=first["waba"]))).status == 200
    for tenant in (first, second):
        events = published(tenant["id"], "account.update")
        assert [e["data"]["event"] for e in events] == [
            "DISABLED_UPDATE",
            "ACCOUNT_RESTRICTION",
            "ACCOUNT_VIOLATION",
        ]
        disabled, restriction, violation = (e["data"] for e in events)
        assert disabled == {
            "waba_id": first["waba"],
            "event": "DISABLED_UPDATE",
            "phone_number": None,
            "details": {"ban_info": {"waba_ban_state": "REINSTATE", "waba_ban_date": "April 17, 2025"}},
            "timestamp": "2025-03-31T20:11:43.000Z",
        }
        assert [r["restriction_type"] for r in restriction["details"]["restriction_info"]] == [
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
        ]
        assert violation["details"] == {"violation_info": {"violation_type": "ADULT"}}
        assert len(_provider_events(db_rows, tenant["id"])) == 3
    await send.send(sample("account_violation", waba=first["waba"]))
    assert len(published(second["id"])) == 3


async def test_a_waba_shared_with_another_apps_secret_is_refused_whole(
    business_tenant, sender, db_rows, published
):
    """Like messages: every tenant a delivery names must have signed it, or nothing is stored."""
    first = await business_tenant()
    second = await business_tenant(waba=first["waba"])  # its own app secret
    resp = await sender(first).send(sample("account_violation", waba=first["waba"]))
    assert resp.status == 401
    for tenant in (first, second):
        assert _provider_events(db_rows, tenant["id"]) == [] and published(tenant["id"]) == []


@pytest.mark.parametrize("name", FIELD_SAMPLES)
async def test_wrong_signature_stores_nothing_and_unknown_ids_are_not_stored(
    name, app_client, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    send = sender(tenant)
    mine = sample(name, waba=tenant["waba"], pnid=tenant["pnid"])
    resp = await send.send(mine, app_secret="not-" + tenant["app_secret"])
    assert resp.status == 401
    resp = await send.send(mine, signature="sha256=" + "0" * 64)
    assert resp.status == 401
    # Meta's own ids: a WABA and a number no tenant here holds.
    resp = await send.send(sample(name))
    assert resp.status == 200, resp.text
    ack = json.loads(resp.text)
    assert ack["notices"] == 0 and ack["messages"] == 0
    assert ack["unknown_waba_ids"] + ack["unknown_phone_number_ids"] == 1
    assert _provider_events(db_rows, tenant["id"]) == [] and published(tenant["id"]) == []
    assert db_rows("SELECT COUNT(*) AS n FROM provider_events")[0]["n"] == 0
    assert db_rows("SELECT COUNT(*) AS n FROM messages")[0]["n"] == 0


async def test_messages_top_level_errors_are_provider_errors(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    payload = sample("messages_errors", waba=tenant["waba"], pnid=tenant["pnid"])
    for _ in range(2):
        assert (await send.send(payload)).status == 200
    (event,) = published(tenant["id"])
    assert event["type"] == "provider.error"
    assert event["data"] == {
        "field": "messages",
        "waba_id": None,
        "phone_number_id": tenant["pnid"],
        "code": "130429",
        "message": "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time",
        "errors": payload["entry"][0]["changes"][0]["value"]["errors"],
        "timestamp": None,
    }
    (kept,) = _provider_events(db_rows, tenant["id"])
    assert kept["field"] == "messages"


@pytest.mark.smoke
async def test_calls_become_call_events(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    names = ("call_connect", "call_status", "call_terminate")
    for name in names:
        for _ in range(2):  # once more: a redelivery
            assert (await send.send(sample(name, pnid=tenant["pnid"]))).status == 200
    events = published(tenant["id"])
    assert _types(events) == ["call.connect", "call.status", "call.terminate", "provider.error"]
    connect, status, terminate, error = (e["data"] for e in events)
    assert connect == {
        "call_id": "wacid.xxxx=",
        "event": "connect",
        "direction": "USER_INITIATED",
        "from": "972987654321",
        "to": "16315553601",
        "contact_name": "Test Name",
        "status": None,
        "session": {"sdp": "<<RFC 8866 SDP>>", "sdp_type": "offer"},
        "start_time": None,
        "end_time": None,
        "duration": None,
        "biz_opaque_callback_data": None,
        "errors": None,
        "phone_number_id": tenant["pnid"],
        "timestamp": "2025-07-15T12:38:27.000Z",
    }
    assert status["status"] == "RINGING" and status["to"] == "163155536021" and status["event"] == "status"
    assert terminate["status"] == "COMPLETED" and terminate["duration"] == 120
    assert (
        terminate["start_time"] == "2022-12-21T17:47:04.000Z"
        and terminate["end_time"] == "2022-12-21T17:49:04.000Z"
    )
    assert error["field"] == "calls" and error["code"] == "12455" and error["message"] == "ERROR_DETAILS"
    kept = _provider_events(db_rows, tenant["id"])
    assert [r["field"] for r in kept] == ["calls"] * 3
    assert all(r["phone_number_id"] == tenant["pnid"] and r["occurred_at"] is not None for r in kept)


@pytest.mark.smoke
async def test_business_app_echoes_are_outbound_messages(business_tenant, sender, db_rows, published):
    tenant = await business_tenant()
    send = sender(tenant)
    payload = sample("smb_message_echo_text", waba=tenant["waba"], pnid=tenant["pnid"])
    for _ in range(2):
        assert (await send.send(payload)).status == 200
    (row,) = db_rows("SELECT * FROM messages WHERE tenant_id = :t", t=tenant["id"])
    echo = payload["entry"][0]["changes"][0]["value"]["message_echoes"][0]
    assert row["direction"] == "outbound" and row["origin"] == "business_app" and row["status"] == "sent"
    assert row["provider"] == "business_api" and row["provider_message_id"] == echo["id"]
    assert json.loads(row["content"]) == {"text": echo["text"]["body"]}
    (conv,) = db_rows("SELECT * FROM conversations WHERE tenant_id = :t", t=tenant["id"])
    assert conv["wa_id"] == USER and conv["last_message_id"] == row["id"] and conv["unread_count"] == 0
    (event,) = published(tenant["id"])
    assert event["type"] == "message.sent"
    data = event["data"]
    assert data["origin"] == "business_app" and data["direction"] == "outbound"
    assert data["from"] == "15550783881" and data["to"] == USER and data["message_id"] == row["id"]
    assert (
        data["content"] == {"text": echo["text"]["body"]} and data["timestamp"] == "2025-02-12T00:43:44.000Z"
    )
    assert data["route_reason"] == "typed in the WhatsApp Business app"
    assert [r["field"] for r in _provider_events(db_rows, tenant["id"])] == ["smb_message_echoes"]

    # Its statuses come like any outbound message's.
    resp = await send.send(
        g.messages_payload(tenant["waba"], tenant["pnid"], statuses=[g.status(echo["id"], "read", USER)])
    )
    assert resp.status == 200
    assert _types(published(tenant["id"])) == ["message.sent", "message.status"]
    (row,) = db_rows("SELECT status FROM messages WHERE tenant_id = :t", t=tenant["id"])
    assert row["status"] == "read"
