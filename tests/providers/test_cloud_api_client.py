"""The Cloud API client against the fake Graph API (which this also tests), and the webhook sender."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from typing import Any

import pytest
from aiohttp import web

from control_plane.providers.cloud_api import (
    CloudAPIClient,
    CloudCredentials,
    GraphAPIAuthError,
    GraphAPIError,
    GraphAPITimeout,
    GraphAPIUnavailable,
)
from control_plane.providers.graph_errors import ErrorScope, classify
from tests.fakes import graph_api as g
from tests.fakes.graph_api import FakeGraphAPI

pytestmark = pytest.mark.timeout(10)

PNID = "106540352242922"
WABA = "102290129340398"
TOKEN = "EAAG-tenant-a-secret-token"
USER = "16505551234"
SECRET = "app-secret-a"
CREDS = CloudCredentials(PNID, WABA, TOKEN)


@pytest.fixture
async def fake():
    async with FakeGraphAPI() as f:
        f.add_number(PNID, WABA, TOKEN, display_phone_number="15550783881")
        yield f


@pytest.fixture
async def client(fake):
    c = await CloudAPIClient.create(fake.url, timeout_s=5)
    yield c
    await c.close()


@pytest.fixture
async def receiver(aiohttp_server):
    """A minimal webhook endpoint: verifies the signature on the raw bytes, records what it got."""
    got: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        header = request.headers.get("X-Hub-Signature-256", "")
        if not hmac.compare_digest(g.sign(raw, SECRET), header):
            return web.Response(status=401, text="bad signature")
        got.append({"raw": raw, "json": json.loads(raw)})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")), got


async def _error(coro) -> GraphAPIError:
    with pytest.raises(GraphAPIError) as info:
        await coro
    return info.value


# -- sending -------------------------------------------------------------------------------------


async def test_send_text_inside_window_returns_wamid_and_canonical_wa_id(fake, client):
    fake.open_window(PNID, USER)
    result = await client.send_text(
        CREDS, "+" + USER, "hello", reply_to="wamid.prev", biz_opaque_callback_data="outbox-1"
    )
    assert result.wamid.startswith("wamid.") and result.wa_id == USER and result.message_status is None
    [sent] = fake.sent
    assert (
        sent["pnid"] == PNID
        and sent["to"] == USER
        and sent["type"] == "text"
        and sent["wamid"] == result.wamid
    )
    assert sent["payload"] == {"body": "hello", "preview_url": False}
    assert sent["body"]["context"] == {"message_id": "wamid.prev"}
    assert sent["biz_opaque_callback_data"] == "outbox-1"
    assert fake.sent_count(to=USER) == 1 and fake.sent_count(pnid="other") == 0


async def test_wa_id_may_differ_from_input(fake, client):
    fake.set_wa_id("5511912345678", "551112345678")
    fake.open_window(PNID, "551112345678")
    result = await client.send_text(CREDS, "+5511912345678", "oi")
    assert result.wa_id == "551112345678"


async def test_free_form_outside_window_is_131047(fake, client):
    err = await _error(client.send_text(CREDS, USER, "hi"))
    assert (err.code, err.retryable, err.scope) == (131047, False, ErrorScope.RECIPIENT)
    fake.open_window(PNID, USER, at=time.time() - 24 * 3600 - 1)  # expired window
    assert (await _error(client.send_text(CREDS, USER, "hi"))).code == 131047
    assert fake.sent == []


async def test_send_template_outside_window(fake, client):
    fake.add_template(
        WABA,
        "order_update",
        "en_US",
        components=[{"type": "BODY", "text": "Hi {{1}}, your order {{2}} shipped"}],
    )
    components = [
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "42"}]}
    ]
    result = await client.send_template(CREDS, USER, "order_update", "en_US", components)
    assert result.message_status == "accepted"
    assert fake.sent[0]["payload"]["language"] == {"code": "en_US", "policy": "deterministic"}
    err = await _error(client.send_template(CREDS, USER, "order_update", "en_US", components[:0]))
    assert (err.code, err.scope, err.retryable) == (132000, ErrorScope.TEMPLATE, False)


async def test_unknown_or_paused_template(fake, client):
    err = await _error(client.send_template(CREDS, USER, "nope", "en_US"))
    assert (err.code, err.http_status, err.retryable, err.scope) == (132001, 404, False, ErrorScope.TEMPLATE)
    assert err.message.startswith("(#132001)") and err.fbtrace_id
    fake.add_template(WABA, "promo", "en_US", status="PAUSED")
    assert (await _error(client.send_template(CREDS, USER, "promo", "en_US"))).code == 132015


async def test_media_interactive_location_reaction_contacts(fake, client):
    fake.open_window(PNID, USER)
    await client.send_media(CREDS, USER, "image", media_id="123", caption="look")
    await client.send_media(CREDS, USER, "document", link="https://example.com/a.pdf", filename="a.pdf")
    buttons = {
        "type": "button",
        "body": {"text": "Continue?"},
        "action": {
            "buttons": [{"type": "reply", "reply": {"id": f"b{i}", "title": f"B{i}"}} for i in range(3)]
        },
    }
    await client.send_interactive(CREDS, USER, buttons)
    rows = [{"id": f"r{i}", "title": f"Row {i}", "description": "d"} for i in range(10)]
    listing = {
        "type": "list",
        "body": {"text": "Pick"},
        "action": {"button": "Options", "sections": [{"title": "S1", "rows": rows}]},
    }
    await client.send_interactive(CREDS, USER, listing)
    await client.send_location(CREDS, USER, -23.55, -46.63, name="Office", address="Av. Paulista")
    await client.send_reaction(CREDS, USER, "wamid.x", "👍")
    await client.send_reaction(CREDS, USER, "wamid.x", "")  # removes the reaction
    await client.send_raw(
        CREDS, {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ana"}}]}, to=USER
    )
    assert [s["type"] for s in fake.sent] == [
        "image",
        "document",
        "interactive",
        "interactive",
        "location",
        "reaction",
        "reaction",
        "contacts",
    ]
    assert fake.sent[1]["payload"] == {"link": "https://example.com/a.pdf", "filename": "a.pdf"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"type": "text", "text": {"body": "x" * 4097}}, 100),
        ({"type": "text", "text": {}}, 131008),
        ({"type": "audio", "audio": {"id": "1", "caption": "no captions on audio"}}, 100),
        ({"type": "image", "image": {"id": "1", "link": "https://x/y.jpg"}}, 100),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "?"},
                    "action": {
                        "buttons": [
                            {"type": "reply", "reply": {"id": f"b{i}", "title": "t"}} for i in range(4)
                        ]
                    },
                },
            },
            131009,
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "?"},
                    "action": {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t" * 21}}]},
                },
            },
            100,
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "body": {"text": "?"},
                    "action": {
                        "button": "Go",
                        "sections": [
                            {"title": "a", "rows": [{"id": f"r{i}", "title": "t"} for i in range(6)]},
                            {"title": "b", "rows": [{"id": f"s{i}", "title": "t"} for i in range(5)]},
                        ],
                    },
                },
            },
            131009,
        ),
        ({"type": "location", "location": {"latitude": 95, "longitude": 0}}, 100),
        ({"type": "reaction", "reaction": {"emoji": "x"}}, 131008),
        ({"type": "sticker_pack", "sticker_pack": {}}, 100),
        ({"type": "text", "text": {"body": "hi"}, "to": "not-a-number"}, 100),
    ],
)
async def test_invalid_payloads_are_rejected(fake, client, payload, code):
    fake.open_window(PNID, USER)
    err = await _error(client.send_raw(CREDS, {"to": USER, **payload}))
    assert (err.code, err.retryable, err.http_status) == (code, False, 400)
    assert fake.sent == []


async def test_mark_read_and_typing(fake, client):
    assert await client.mark_read(CREDS, "wamid.in1") is True
    assert await client.mark_read(CREDS, "wamid.in2", typing=True) is True
    assert [(m["message_id"], m["typing"]) for m in fake.read_marks] == [
        ("wamid.in1", False),
        ("wamid.in2", True),
    ]


# -- auth and account ----------------------------------------------------------------------------


async def test_bad_token_is_190_not_retryable(fake, client):
    bad = CloudCredentials(PNID, WABA, "wrong-token")
    err = await _error(client.get_phone_number(bad))
    assert isinstance(err, GraphAPIAuthError)
    assert (err.code, err.http_status, err.retryable, err.scope) == (190, 401, False, ErrorScope.AUTH)
    assert "wrong-token" not in repr(bad) and TOKEN not in repr(CREDS) and "wrong-token" not in str(err)
    fake.expire_token(TOKEN)
    err = await _error(client.send_text(CREDS, USER, "x"))
    assert (err.code, err.subcode) == (190, 463)


async def test_get_phone_number_validates_credentials(fake, client):
    info = await client.get_phone_number(CREDS)
    assert (info.id, info.display_phone_number, info.quality_rating) == (PNID, "15550783881", "GREEN")
    fake.add_number("999", "888", "other-token")
    err = await _error(
        client.get_phone_number(CloudCredentials("999", WABA, TOKEN))
    )  # not this token's number
    assert (err.code, err.subcode, err.retryable) == (100, 33, False)


# -- injected failures ---------------------------------------------------------------------------


async def test_injected_130429_is_retryable_for_the_number(fake, client):
    fake.open_window(PNID, USER)
    fake.inject_error(130429, subcode=2494055)
    err = await _error(client.send_text(CREDS, USER, "x"))
    assert (err.code, err.subcode, err.retryable, err.scope) == (130429, 2494055, True, ErrorScope.NUMBER)
    assert err.retry_after_s and err.retry_after_s > 0
    assert (await client.send_text(CREDS, USER, "x")).wamid  # times=1: the retry goes through
    assert fake.sent_count() == 1


async def test_injected_131056_only_for_that_recipient(fake, client):
    other = "447700900123"
    fake.open_window(PNID, USER)
    fake.open_window(PNID, other)
    fake.inject_error(131056, to=USER, times=None)
    err = await _error(client.send_text(CREDS, "+" + USER, "x"))
    assert (err.code, err.retryable, err.scope) == (131056, True, ErrorScope.RECIPIENT)
    await client.send_text(CREDS, other, "fine")
    fake.clear_errors()
    await client.send_text(CREDS, USER, "now fine")


async def test_5xx_is_retryable_with_or_without_envelope(fake, client):
    fake.open_window(PNID, USER)
    fake.inject_error(None, http_status=502, retry_after="3")
    err = await _error(client.send_text(CREDS, USER, "x"))
    assert (err.code, err.http_status, err.retryable, err.retry_after_s) == (None, 502, True, 3.0)
    fake.inject_error(131000, http_status=500)
    err = await _error(client.send_text(CREDS, USER, "x"))
    assert (err.code, err.retryable, err.scope) == (131000, True, ErrorScope.SERVICE)


async def test_rate_limit_enforced_per_number(fake, client):
    fake.open_window(PNID, USER)
    fake.set_rate_limit(PNID, 3)
    results = await asyncio.gather(
        *(client.send_text(CREDS, USER, str(i)) for i in range(5)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, GraphAPIError)]
    assert len(errors) == 2 and all(e.code == 130429 for e in errors)
    assert fake.max_per_second(PNID) == 3


async def test_pair_limit(fake, client):
    fake.open_window(PNID, USER)
    fake.set_pair_limit(PNID, 6.0)
    await client.send_text(CREDS, USER, "1")
    assert (await _error(client.send_text(CREDS, USER, "2"))).code == 131056


async def test_slow_answer_times_out_as_unavailable(fake):
    fake.open_window(PNID, USER)
    fake.set_delay(5.0, times=1)
    async with await CloudAPIClient.create(fake.url, timeout_s=0.2) as fast:
        started = time.monotonic()
        err = await _error(fast.send_text(CREDS, USER, "x"))
        assert isinstance(err, GraphAPITimeout) and isinstance(err, GraphAPIUnavailable)
        assert err.retryable and err.code is None and err.maybe_sent and err.scope == ErrorScope.SERVICE
        assert time.monotonic() - started < 2
        assert (await fast.send_text(CREDS, USER, "y")).wamid  # only one answer was delayed


async def test_connection_refused_is_unavailable_and_not_sent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with await CloudAPIClient.create(f"http://127.0.0.1:{port}", timeout_s=2) as c:
        err = await _error(c.send_text(CREDS, USER, "x"))
    assert isinstance(err, GraphAPIUnavailable) and err.retryable and err.maybe_sent is False


def test_classification_table():
    assert classify(190).scope == ErrorScope.AUTH and not classify(190).retryable
    assert classify(4).retryable and classify(80007).scope == ErrorScope.APP
    assert classify(131057).retryable and classify(131057).retry_after_s == 60.0
    assert not classify(131048).retryable and not classify(368).retryable
    assert classify(None, 503).retryable and classify(None, 429).retryable
    assert not classify(999999, 400).retryable
    assert not classify(250).retryable  # 200-299 permissions


def test_max_per_second_sliding_and_aligned():
    fake = FakeGraphAPI()
    for t in (10.6, 10.7, 10.8, 11.1, 11.2, 12.5):
        fake.sent.append({"pnid": "p", "at": t})
    assert fake.max_per_second("p") == 5
    assert fake.max_per_second("p", sliding=False) == 3


# -- media ---------------------------------------------------------------------------------------


async def test_media_upload_info_download_delete(fake, client):
    data = b"\x89PNG\r\n" + bytes(range(256)) * 40
    media_id = await client.upload_media(CREDS, data, "image/png", "a.png")
    info = await client.get_media(CREDS, media_id)
    assert (info.id, info.mime_type, info.file_size) == (media_id, "image/png", len(data))
    assert info.url.startswith(fake.url)
    assert await client.download_media(CREDS, info.url) == data
    err = await _error(client.download_media(CloudCredentials(PNID, WABA, "bad"), info.url))
    assert err.http_status == 401 and err.code == 190
    assert await client.delete_media(CREDS, media_id) is True
    assert (await _error(client.get_media(CREDS, media_id))).code == 100


# -- templates -----------------------------------------------------------------------------------


async def test_templates_paging_create_delete(fake, client):
    for i in range(7):
        fake.add_template(WABA, f"t{i}", status="APPROVED" if i % 2 == 0 else "REJECTED")
    names = [t.name for t in await client.list_templates(CREDS, page_size=3)]
    assert names == [f"t{i}" for i in range(7)]
    assert sum(1 for m, path, _ in fake.requests if m == "GET" and path.endswith("/message_templates")) == 3
    approved = await client.list_templates(CREDS, status="APPROVED", page_size=2)
    assert [t.name for t in approved] == ["t0", "t2", "t4", "t6"]
    created = await client.create_template(
        CREDS,
        "welcome",
        "en_US",
        "UTILITY",
        [{"type": "BODY", "text": "Hi {{1}}", "example": {"body_text": [["Ana"]]}}],
    )
    assert created["status"] == "PENDING" and created["id"]
    assert (
        await _error(client.send_template(CREDS, USER, "welcome", "en_US"))
    ).code == 132001  # not approved
    fake.set_template_status(WABA, "welcome", "APPROVED")
    await client.send_template(
        CREDS, USER, "welcome", "en_US", [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    )
    assert await client.delete_template(CREDS, "welcome") is True
    assert "welcome" not in [t.name for t in await client.list_templates(CREDS)]


# -- webhook sender ------------------------------------------------------------------------------


async def test_signature_covers_the_exact_ascii_escaped_bytes(receiver):
    url, got = receiver
    payload = g.messages_payload(WABA, PNID, messages=[g.text_message(USER, "Olá, ação ✓ 😀")])
    status, _ = await g.deliver(url, payload, SECRET)
    assert status == 200
    raw = got[0]["raw"]
    assert raw.isascii() and b"\\u00e1" in raw and b'": ' not in raw
    assert (
        got[0]["json"]["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "Olá, ação ✓ 😀"
    )
    # Re-serializing the parsed body (what a careless receiver does) gives other bytes.
    assert json.dumps(got[0]["json"]).encode() != raw
    assert (await g.deliver(url, payload, SECRET, signature=g.BAD_SIGNATURE))[0] == 401
    assert (await g.deliver(url, payload, SECRET, signature=False))[0] == 401
    assert (await g.deliver(url, payload, "other-tenant-secret"))[0] == 401
    assert len(got) == 1


async def test_batch_has_n_entries_by_m_changes(receiver):
    url, _got = receiver
    payload = g.text_batch(2, 3, waba_id=[WABA, "2000"], phone_number_id=[PNID, "3000"])
    assert len(payload["entry"]) == 2 and all(len(e["changes"]) == 3 for e in payload["entry"])
    assert payload["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] == "3000"
    ids = {c["value"]["messages"][0]["id"] for e in payload["entry"] for c in e["changes"]}
    assert len(ids) == 6
    assert (await g.deliver(url, payload, SECRET))[0] == 200


def test_inbound_builders_follow_the_reference():
    assert g.unsupported_message(USER)["errors"][0]["code"] == 131051
    assert g.button_reply_message(USER, "yes", "Yes")["interactive"]["type"] == "button_reply"
    assert g.list_reply_message(USER, "r1", "Row")["interactive"]["list_reply"]["id"] == "r1"
    assert g.reaction_message(USER, "wamid.a", "")["reaction"] == {"message_id": "wamid.a"}
    image = g.image_message(USER, caption="c")
    assert set(image["image"]) >= {"id", "mime_type", "sha256", "caption"}
    assert g.location_message(USER, 1.5, 2.5)["location"] == {"latitude": 1.5, "longitude": 2.5}
    assert g.contacts_message(USER)["contacts"][0]["phones"][0]["wa_id"]
    assert g.button_message(USER, "OPT_OUT", "Stop")["button"] == {"payload": "OPT_OUT", "text": "Stop"}
    msg = g.text_message("+" + USER, "hi", context={"forwarded": True})
    assert msg["from"] == USER and isinstance(msg["timestamp"], str) and msg["context"] == {"forwarded": True}
    value = g.change_value(PNID, messages=[msg])
    assert value["contacts"] == [{"profile": {"name": "Sheena Nelson"}, "wa_id": USER}]
    failed = g.status("wamid.a", "failed", USER)
    assert failed["errors"][0]["code"] == 131047 and "pricing" not in failed
    tsu = g.template_status_payload(WABA, "123", "promo", "en_US", "APPROVED")
    assert tsu["entry"][0]["changes"][0]["field"] == "message_template_status_update"


async def test_sender_opens_window_and_sends_statuses(fake, client, receiver):
    url, got = receiver
    hooks = fake.webhooks(url, SECRET)
    delivery, _wamid_in = await hooks.text(PNID, USER, "hi there")
    assert delivery.status == 200 and fake.window_open(PNID, USER)
    result = await client.send_text(CREDS, USER, "hello back", biz_opaque_callback_data="ob-7")
    out = await hooks.statuses(
        result.wamid, ("read", "sent"), copies=2
    )  # out of order, no delivered, duplicated
    assert [d.status for d in out] == [200, 200]
    statuses = [j["json"]["entry"][0]["changes"][0]["value"]["statuses"][0] for j in got[1:]]
    assert [s["status"] for s in statuses] == ["read", "read", "sent", "sent"]
    assert all(s["recipient_id"] == USER and s["biz_opaque_callback_data"] == "ob-7" for s in statuses)
    await hooks.statuses(result.wamid, ("failed",), errors=[g.failed_error(131026)], together=True)
    assert got[-1]["json"]["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]["code"] == 131026
    bad = await hooks.inbound(PNID, g.text_message("447700900999", "x"), signature=g.BAD_SIGNATURE)
    assert bad.status == 401 and not fake.window_open(PNID, "447700900999")


async def test_token_never_logged_and_download_size_cap(fake, client, caplog):
    caplog.set_level(logging.DEBUG, logger="control_plane.providers.cloud_api")
    caplog.set_level(logging.DEBUG, logger="control_plane.providers.graph_http")
    fake.open_window(PNID, USER)
    await client.send_text(CREDS, USER, "x")
    await _error(client.send_text(CloudCredentials(PNID, WABA, "bad-token-xyz"), USER, "x"))
    media_id = await client.upload_media(CREDS, b"x" * 1000, "application/pdf", "a.pdf")
    info = await client.get_media(CREDS, media_id)
    err = await _error(client.download_media(CREDS, info.url, max_bytes=100))
    assert "too large" in err.message
    assert f"phone_number_id={PNID}" in caplog.text
    assert TOKEN not in caplog.text and "bad-token-xyz" not in caplog.text
    assert err.to_dict()["retryable"] is False


async def test_control_routes_and_stats(fake, client):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{fake.url}/_fake/numbers",
            json={"phone_number_id": "777", "waba_id": "778", "token": "t7", "rate_limit": 5},
        ) as resp:
            assert resp.status == 201
        async with http.post(
            f"{fake.url}/_fake/windows", json={"phone_number_id": "777", "wa_id": USER}
        ) as resp:
            assert resp.status == 201
        creds = CloudCredentials("777", "778", "t7")
        await client.send_text(creds, USER, "a", biz_opaque_callback_data="m1")
        await client.send_text(creds, USER, "a", biz_opaque_callback_data="m1")
        async with http.get(f"{fake.url}/_fake/stats") as resp:
            stats = await resp.json()
    number = stats["numbers"]["777"]
    assert stats["sent"] == 2 and stats["duplicates"] == 1 and list(stats["numbers"]) == ["777"]
    assert number["sent"] == 2 and number["max_per_second"] == 2 and number["throttled"] == 0
    assert len(number["times"]) == 2 and number["times"][0] <= number["times"][1]
