"""A contact's marketing opt-out (Meta's ``user_preferences`` webhook) is honoured by messaging: a
MARKETING template to them is refused at the API (422 ``contact_opted_out``) or, when the stop
arrives while it waits, fails with ``message.failed`` and that code; utility templates and other
contacts are not affected; a later ``resume`` lifts it, an older ``stop`` arriving late does not
bring it back. The deliveries are Meta's documented samples (tests/webhooks/samples/fields/fields.json)."""

from __future__ import annotations

import copy
import json

import pytest

from control_plane.app import create_app
from tests.messaging.conftest import get_message, wait_status
from tests.support import wait_for
from tests.webhooks.samples import sample

pytestmark = pytest.mark.timeout(60)
USER = "16505551234"  # the contact of Meta's user_preferences samples
OTHER = "16505550000"


@pytest.fixture
async def app_client(aiohttp_client, make_settings, fake, empty_db):
    settings = make_settings(GRAPH_API_URL=fake.url, MESSAGING_POLL_S="0.1", MESSAGING_RETRY_BASE_S="0.1")
    return await aiohttp_client(create_app(settings))


async def _template(app_client, tenant, name: str, to: str = USER):
    body = {"to": to, "type": "template", "template": {"name": name, "language": "en_US"}}
    resp = await app_client.post("/api/messages", json=body, headers=tenant["headers"])
    return resp.status, await resp.json()


def _stop(waba: str, pnid: str, timestamp: int) -> dict:
    """Meta's stop sample with another timestamp (a stop that was sent at ``timestamp``)."""
    payload = sample("user_preferences_stop", waba=waba, pnid=pnid)
    value = payload["entry"][0]["changes"][0]["value"]
    value["user_preferences"] = [{**copy.deepcopy(value["user_preferences"][0]), "timestamp": timestamp}]
    return payload


@pytest.mark.smoke
async def test_stop_blocks_marketing_templates_until_resume(
    app_client, fake, business_tenant, sender, db_rows, published
):
    tenant = await business_tenant()
    fake.add_template(tenant["waba"], "spring_sale", "en_US", category="MARKETING")
    fake.add_template(tenant["waba"], "order_update", "en_US", category="UTILITY")
    assert (await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])).status == 200
    send = sender(tenant)

    # A marketing template queued before the stop, still waiting (Meta answers "rate limit" for now).
    fake.inject_error(130429, to=USER, times=None)
    status, waiting = await _template(app_client, tenant, "spring_sale")
    assert status == 202, waiting

    async def tried() -> bool:
        return ((await get_message(app_client, tenant, waiting["id"]))["attempts"] or 0) >= 1

    await wait_for(tried, message="a first attempt")

    stop = sample("user_preferences_stop", waba=tenant["waba"], pnid=tenant["pnid"])
    assert (await send.send(stop)).status == 200
    (event,) = published(tenant["id"], "contact.preferences")
    assert event["data"] == {
        "wa_id": USER,
        "user_id": None,
        "phone_number_id": tenant["pnid"],
        "category": "marketing_messages",
        "value": "stop",
        "detail": "User requested to stop marketing messages",
        "timestamp": "2024-11-15T21:20:01.000Z",
        "applied": True,
    }
    (pref,) = db_rows("SELECT * FROM contact_preferences WHERE tenant_id = :t", t=tenant["id"])
    assert pref["wa_id"] == USER and pref["category"] == "marketing_messages" and pref["value"] == "stop"

    # The waiting one is not sent when its turn comes: message.failed, contact_opted_out.
    fake.clear_errors()
    failed = await wait_status(app_client, tenant, waiting["id"], "failed")
    assert failed["error"]["code"] == "contact_opted_out", failed
    assert fake.sent_count(to=USER) == 0
    (event,) = published(tenant["id"], "message.failed")
    assert event["data"]["message_id"] == waiting["id"]
    assert event["data"]["error"]["code"] == "contact_opted_out"

    # A new one is refused at once; a utility template and other contacts are not affected.
    status, body = await _template(app_client, tenant, "spring_sale")
    assert status == 422 and body["error"]["code"] == "contact_opted_out", body
    assert body["error"]["field"] == "to" and "marketing" in body["error"]["message"]
    status, utility = await _template(app_client, tenant, "order_update")
    assert status == 202
    status, other = await _template(app_client, tenant, "spring_sale", to=OTHER)
    assert status == 202
    await wait_status(app_client, tenant, utility["id"], "sent")
    await wait_status(app_client, tenant, other["id"], "sent")

    # Redelivered: nothing new.
    assert (await send.send(stop)).status == 200
    assert len(published(tenant["id"], "contact.preferences")) == 1

    # Resume lifts it.
    resume = sample("user_preferences_resume", waba=tenant["waba"], pnid=tenant["pnid"])
    assert (await send.send(resume)).status == 200
    assert published(tenant["id"], "contact.preferences")[-1]["data"]["value"] == "resume"
    status, again = await _template(app_client, tenant, "spring_sale")
    assert status == 202, again
    await wait_status(app_client, tenant, again["id"], "sent")

    # A stop sent before that resume, delivered late: published (applied: false), not honoured.
    late = _stop(tenant["waba"], tenant["pnid"], 1731705650)
    resp = await send.send(late)
    assert resp.status == 200 and json.loads(resp.text)["notices"] == 1
    last = published(tenant["id"], "contact.preferences")[-1]["data"]
    assert last["value"] == "stop" and last["applied"] is False
    (pref,) = db_rows("SELECT value FROM contact_preferences WHERE tenant_id = :t", t=tenant["id"])
    assert pref["value"] == "resume"
    status, _ = await _template(app_client, tenant, "spring_sale")
    assert status == 202
    # ... and a newer stop is.
    assert (await send.send(_stop(tenant["waba"], tenant["pnid"], 1731705800))).status == 200
    status, body = await _template(app_client, tenant, "spring_sale")
    assert status == 422 and body["error"]["code"] == "contact_opted_out"


async def test_a_stop_for_another_tenant_number_does_not_block(app_client, fake, business_tenant, sender):
    first = await business_tenant()
    second = await business_tenant()
    for tenant in (first, second):
        fake.add_template(tenant["waba"], "spring_sale", "en_US", category="MARKETING")
        assert (
            await app_client.post("/api/whatsapp/templates/sync", headers=tenant["headers"])
        ).status == 200
    stop = sample("user_preferences_stop", waba=first["waba"], pnid=first["pnid"])
    assert (await sender(first).send(stop)).status == 200
    assert (await _template(app_client, first, "spring_sale"))[0] == 422
    status, sent = await _template(app_client, second, "spring_sale")
    assert status == 202
    await wait_status(app_client, second, sent["id"], "sent")
