"""The Cloud road (providers/cloud.py) against the fake Graph API: the exact request each stored
message kind becomes, and what each answer becomes (outcome, governor penalty, blocked road)."""

from __future__ import annotations

import base64
import socket
from typing import Any

import pytest

from control_plane.providers.base import CLOUD, Failed, OutboundMessage, Retryable, Sent, Unknown
from control_plane.providers.cloud import CloudProvider
from control_plane.providers.cloud_api import CloudAPIClient, CloudCredentials
from tests.fakes import graph_api as g
from tests.fakes.graph_api import FakeGraphAPI

pytestmark = pytest.mark.timeout(10)

PNID = "106540352242922"
WABA = "102290129340398"
TOKEN = "EAAG-tenant-a-secret-token"
USER = "16505551234"
CREDS = CloudCredentials(PNID, WABA, TOKEN)
TENANT = "tenant-a"
MID = "0123456789abcdef0123456789abcdef"  # our message id
OURS = "fedcba9876543210fedcba9876543210"  # another message of ours, carried as wamid.OURS
NUMBER = f"cloud:{PNID}"


class Pacer:
    """Records what the provider asks of the governor."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.inflight = 0

    async def window_acquire(self, key: str, limit: int) -> str:
        self.calls.append(("acquire", key, limit))
        self.inflight += 1
        return key

    def window_release(self, win: Any) -> None:
        self.calls.append(("release", win))
        self.inflight -= 1

    async def penalize(self, key: str, seconds: float) -> None:
        self.calls.append(("penalize", key, seconds))

    async def penalize_pair(self, number_key: str, recipient: str, seconds: float) -> None:
        self.calls.append(("penalize_pair", number_key, recipient, seconds))


async def resolve(tenant_id: str, ref: str, provider: str) -> str:
    assert (tenant_id, provider) == (TENANT, CLOUD)
    return "wamid.OURS" if ref == OURS else ref


@pytest.fixture
async def fake():
    async with FakeGraphAPI() as f:
        f.add_number(PNID, WABA, TOKEN)
        f.open_window(PNID, USER)
        yield f


@pytest.fixture
async def client(fake):
    c = await CloudAPIClient.create(fake.url, timeout_s=2)
    yield c
    await c.close()


@pytest.fixture
def pacer() -> Pacer:
    return Pacer()


@pytest.fixture
def cloud(client, pacer) -> CloudProvider:
    return CloudProvider(client, pacer, resolve, rate_per_s=80.5)


def message(kind: str, content: dict[str, Any], **kw: Any) -> OutboundMessage:
    return OutboundMessage(TENANT, MID, USER, kind, content, creds=kw.pop("creds", CREDS), **kw)


def body(part_kind: str, part: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A request body as the dispatcher has always sent it."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": USER,
        "type": part_kind,
        part_kind: part,
        **extra,
        "biz_opaque_callback_data": MID,
    }


REPLY = {"context": {"message_id": "wamid.OURS"}}


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        (
            "text",
            {"text": "hi", "preview_url": True, "context": {"id": OURS}},
            body("text", {"body": "hi", "preview_url": True}, **REPLY),
        ),
        ("text", {"text": "hi"}, body("text", {"body": "hi", "preview_url": False})),
        (
            "image",
            {"media_id": "4490", "caption": "look", "filename": "x.jpg"},
            body("image", {"id": "4490", "caption": "look"}),
        ),
        (
            "document",
            {"link": "https://example.com/a.pdf", "caption": "c", "filename": "a.pdf"},
            body("document", {"link": "https://example.com/a.pdf", "caption": "c", "filename": "a.pdf"}),
        ),
        (
            "document",
            {"link": "https://example.com/a.pdf", "filename": ""},
            body("document", {"link": "https://example.com/a.pdf"}),
        ),
        (
            "audio",
            {"link": "https://example.com/a.ogg"},
            body("audio", {"link": "https://example.com/a.ogg"}),
        ),
        (
            "location",
            {"latitude": -23.55, "longitude": -46.63, "name": "Office", "context": {"id": "wamid.THEIRS"}},
            body(
                "location",
                {"latitude": -23.55, "longitude": -46.63, "name": "Office"},
                context={"message_id": "wamid.THEIRS"},
            ),
        ),
        (
            "reaction",
            {"message_id": OURS, "emoji": "👍"},
            body("reaction", {"message_id": "wamid.OURS", "emoji": "👍"}),
        ),
        (
            "interactive",
            {
                "type": "button",
                "body": {"text": "Continue?"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "b1", "title": "Yes"}}]},
                "context": {"id": OURS},
            },
            body(
                "interactive",
                {
                    "type": "button",
                    "body": {"text": "Continue?"},
                    "action": {"buttons": [{"type": "reply", "reply": {"id": "b1", "title": "Yes"}}]},
                },
                **REPLY,
            ),
        ),
    ],
)
async def test_each_kind_becomes_the_request_sent_before(fake, cloud, pacer, kind, content, expected):
    outcome = await cloud.send(message(kind, content))
    assert isinstance(outcome, Sent) and outcome.provider_message_id == fake.sent[-1]["wamid"]
    assert outcome.canonical_wa_id is None
    assert fake.sent[-1]["body"] == expected
    assert pacer.calls == [("acquire", NUMBER, 80), ("release", NUMBER)]


async def test_template_and_fallback_template(fake, cloud):
    fake.add_template(WABA, "order_update", "en_US", body_params=1)
    components = [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]
    content = {"name": "order_update", "language": "en_US", "components": components}
    assert isinstance(await cloud.send(message("template", content)), Sent)
    part = {"name": "order_update", "language": {"code": "en_US", "policy": "deterministic"}}
    assert fake.sent[-1]["body"] == body("template", {**part, "components": components})

    fake.close_window(PNID, USER)  # outside the window: the tenant's fallback template, no reply context
    fallback = {"name": "order_update", "language": "en_US", "body_param": True}
    text = {"text": "your order shipped", "context": {"id": OURS}}
    assert isinstance(await cloud.send(message("text", text, fallback_template=fallback)), Sent)
    param = [{"type": "body", "parameters": [{"type": "text", "text": "your order shipped"}]}]
    assert fake.sent[-1]["body"] == body("template", {**part, "components": param})

    fake.add_template(WABA, "hello", "en_US", body_params=0)
    plain = {"name": "hello", "language": "en_US", "body_param": False}
    assert isinstance(
        await cloud.send(message("image", {"link": "https://x/y.jpg"}, fallback_template=plain)), Sent
    )
    assert fake.sent[-1]["body"] == body(
        "template", {"name": "hello", "language": {"code": "en_US", "policy": "deterministic"}}
    )


async def test_base64_media_is_uploaded_first(fake, cloud):
    data = b"\x89PNG fake image bytes"
    content = {"base64": base64.b64encode(data).decode(), "mime_type": "image/png", "caption": "c"}
    assert isinstance(await cloud.send(message("image", content)), Sent)
    (media_id,) = fake.media
    assert fake.media[media_id].data == data and fake.media[media_id].mime_type == "image/png"
    assert fake.sent[-1]["body"] == body("image", {"id": media_id, "caption": "c"})


async def test_content_the_client_cannot_express_fails_before_any_request(fake, cloud, pacer):
    outcome = await cloud.send(message("image", {"caption": "no source"}))
    assert outcome == Failed(
        "invalid_content", "cannot send this message: image messages need base64, media_id or link"
    )
    outcome = await cloud.send(message("document", {"base64": "not base64!"}))
    assert isinstance(outcome, Failed) and outcome.code == "invalid_content"
    assert not fake.sent and not fake.media and pacer.calls == []


async def test_canonical_wa_id_is_reported(fake, cloud):
    fake.set_wa_id(USER, "5516505551234")
    fake.open_window(PNID, "5516505551234")
    outcome = await cloud.send(message("text", {"text": "hi"}))
    assert isinstance(outcome, Sent) and outcome.canonical_wa_id == "5516505551234"


async def test_no_credentials_or_no_client_is_no_route(client, pacer):
    expected = Failed("no_route", "the Business API is not configured")
    assert (
        await CloudProvider(client, pacer, resolve, rate_per_s=80).send(
            message("text", {"text": "x"}, creds=None)
        )
        == expected
    )
    assert (
        await CloudProvider(None, pacer, resolve, rate_per_s=80).send(message("text", {"text": "x"}))
        == expected
    )
    assert pacer.calls == []


async def test_throughput_and_pair_errors_push_the_governor_back(fake, cloud, pacer):
    fake.inject_error(130429)
    outcome = await cloud.send(message("text", {"text": "x"}))
    assert isinstance(outcome, Retryable) and outcome.code == "130429" and outcome.retry_after_s == 1.0
    assert ("penalize", NUMBER, 1.0) in pacer.calls and pacer.inflight == 0

    fake.inject_error(131056, retry_after="9")
    outcome = await cloud.send(message("text", {"text": "x"}))
    assert isinstance(outcome, Retryable) and outcome.code == "131056" and outcome.retry_after_s == 9.0
    assert ("penalize_pair", NUMBER, USER, 9.0) in pacer.calls

    fake.inject_error(80007)
    assert isinstance(await cloud.send(message("text", {"text": "x"})), Retryable)
    assert ("penalize", NUMBER, 60.0) in pacer.calls

    fake.inject_error(None, http_status=502)  # a proxy's bare 5xx: retried, nobody penalized
    pacer.calls.clear()
    outcome = await cloud.send(message("text", {"text": "x"}))
    assert isinstance(outcome, Retryable) and outcome.code == "http_502"
    assert [c[0] for c in pacer.calls] == ["acquire", "release"]
    assert not fake.sent


async def test_refused_token_fails_and_blocks_the_road_for_the_tenant(fake, cloud):
    fake.expire_token(TOKEN)
    outcome = await cloud.send(message("text", {"text": "x"}))
    assert isinstance(outcome, Failed) and outcome.code == "190"
    assert cloud.blocked(TENANT) == "token refused (190)" and cloud.blocked("tenant-b") is None
    cloud.unblock(TENANT)
    assert cloud.blocked(TENANT) is None


async def test_outside_window_is_final_with_meta_details(fake, cloud):
    fake.close_window(PNID, USER)
    assert await cloud.send(message("text", {"text": "x"})) == Failed("131047", g.WINDOW_DETAILS)
    assert cloud.blocked(TENANT) is None


async def test_no_answer_is_unknown_and_no_connection_is_retryable(fake, pacer):
    async with await CloudAPIClient.create(fake.url, timeout_s=0.2) as fast:
        fake.set_delay(1.0, times=1)
        outcome = await CloudProvider(fast, pacer, resolve, rate_per_s=80).send(
            message("text", {"text": "x"})
        )
    assert isinstance(outcome, Unknown) and outcome.message.startswith("no answer from the Graph API")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with await CloudAPIClient.create(f"http://127.0.0.1:{port}", timeout_s=2) as nowhere:
        outcome = await CloudProvider(nowhere, pacer, resolve, rate_per_s=80).send(
            message("text", {"text": "x"})
        )
    assert isinstance(outcome, Retryable) and outcome.code == "graph_unavailable"
    assert pacer.inflight == 0
