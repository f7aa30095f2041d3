"""The Web road (providers/web.py): the bridge arguments of each stored kind, and what every error
the supervisor raises from ``send`` becomes (it cannot import them: this pins the contract)."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.providers.base import WEB, Failed, OutboundMessage, Provider, Retryable, Sent, Unknown
from control_plane.providers.cloud import CloudProvider
from control_plane.providers.web import WebProvider
from control_plane.supervisor import errors as sup

TENANT = "tenant-a"
OURS = "fedcba9876543210fedcba9876543210"


class Sessions:
    """A scripted supervisor: answers ``answer`` or raises ``error``; records the calls."""

    def __init__(self, answer: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.answer = answer if answer is not None else {"id": "true_1555@c.us_3EB0"}
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def send(self, tenant_id: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((tenant_id, args))
        if self.error is not None:
            raise self.error
        return self.answer


async def resolve(tenant_id: str, ref: str, provider: str) -> str:
    assert (tenant_id, provider) == (TENANT, WEB)
    return "true_1555@c.us_OURS" if ref == OURS else ref


def message(kind: str, content: dict[str, Any]) -> OutboundMessage:
    return OutboundMessage(TENANT, "0" * 32, "1555", kind, content)


@pytest.mark.parametrize(
    ("kind", "content", "args"),
    [
        (
            "text",
            {"text": "hi", "preview_url": True, "context": {"id": OURS}},
            {"to": "1555", "type": "text", "text": "hi", "reply_to": "true_1555@c.us_OURS"},
        ),
        (
            "location",
            {"latitude": 1.5, "longitude": 2.5, "address": "Av. Paulista"},
            {
                "to": "1555",
                "type": "location",
                "location": {"latitude": 1.5, "longitude": 2.5, "description": "Av. Paulista"},
            },
        ),
        (
            "image",
            {"base64": "aGk=", "mime_type": "image/png", "caption": "", "filename": "a.png"},
            {
                "to": "1555",
                "type": "media",
                "media": {"base64": "aGk=", "mimetype": "image/png", "filename": "a.png"},
                "caption": "",
            },
        ),
        (
            "document",
            {"link": "https://x/a.pdf", "context": {"id": "3EB0THEIRS"}},
            {"to": "1555", "type": "media", "media": {"url": "https://x/a.pdf"}, "reply_to": "3EB0THEIRS"},
        ),
    ],
)
async def test_bridge_args_per_kind(kind, content, args):
    sessions = Sessions()
    outcome = await WebProvider(sessions, resolve).send(message(kind, content))
    assert outcome == Sent("true_1555@c.us_3EB0")
    assert sessions.calls == [(TENANT, args)]


async def test_an_answer_without_an_id_is_unknown():
    outcome = await WebProvider(Sessions(answer={"ok": True}), resolve).send(message("text", {"text": "x"}))
    assert outcome == Unknown("the bridge answered without a message id")


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (
            sup.SessionNotReady(TENANT, "qr"),
            Retryable("web_not_ready", "the WhatsApp session is not ready (state qr)", not_ready=True),
        ),
        (sup.BridgeBadRequest("bad_request", "no such chat"), Failed("bridge_bad_request", "no such chat")),
        (
            sup.BridgeRefused("not_on_whatsapp", "1555 has no WhatsApp"),
            Failed("bridge_not_on_whatsapp", "1555 has no WhatsApp"),
        ),
        (sup.BridgeRefused("not_supported", "stickers"), Failed("bridge_not_supported", "stickers")),
        (sup.BridgeRefused("invalid_state", "busy"), Retryable("bridge_invalid_state", "busy")),
        (sup.BridgeUnavailable("timed out", ambiguous=True), Unknown("bridge gave no answer: timed out")),
        (
            sup.BridgeUnavailable("bridge exited", ambiguous=False),
            Retryable("bridge_unavailable", "bridge exited"),
        ),
        (sup.SupervisorClosed("shutting down"), Retryable("shutting_down", "shutting down")),
    ],
)
async def test_supervisor_errors_become_outcomes(error, outcome):
    assert await WebProvider(Sessions(error=error), resolve).send(message("text", {"text": "x"})) == outcome


async def test_other_errors_propagate():
    with pytest.raises(sup.NotSandbox):
        await WebProvider(Sessions(error=sup.NotSandbox("no")), resolve).send(message("text", {"text": "x"}))
    with pytest.raises(RuntimeError):
        await WebProvider(Sessions(error=RuntimeError("boom")), resolve).send(message("text", {"text": "x"}))


def test_both_roads_implement_the_send_protocol():
    web = WebProvider(Sessions(), resolve)
    cloud = CloudProvider(None, object(), resolve, rate_per_s=80)  # type: ignore[arg-type]  # never paced here
    assert isinstance(web, Provider) and isinstance(cloud, Provider)
    assert (web.name, cloud.name) == ("web", "business_api")
