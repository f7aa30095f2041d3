"""A signed delivery changed by one byte, at every position of its body, keeps its (now wrong)
signature: never stored, never a 5xx; where the byte is inside the message (the tenant is still
named) it is 401; a change to the routing ids (the number, the keys around it) names nobody and is
acknowledged with nothing taken (200, 0 messages). Then the untouched delivery is stored once, and
replayed (the same signed bytes again, as an attacker who recorded it would) it stays stored once.
(Missing, forged and cross-tenant signatures, oversize and malformed bodies:
tests/webhooks/test_webhook_receiver.py; floods: tests/webhooks/test_abuse.py.)"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter

import pytest
import sqlalchemy as sa

from tests.chaos.world import build_tenant
from tests.fakes import graph_api as g

pytestmark = [pytest.mark.timeout(120)]


def _other(byte: int) -> int:
    """Another byte of the same kind (digit for digit, letter for letter), else ``x``."""
    char = chr(byte)
    if char.isdigit():
        return ord("0" if char != "0" else "1")
    if char.isalpha():
        return ord("a" if char != "a" else "b") if char.islower() else ord("A" if char != "A" else "B")
    return ord("x")


def _stored(sync_engine, wamid: str) -> int:
    with sync_engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT COUNT(*) FROM messages WHERE provider_message_id = :w"), {"w": wamid}
        ).scalar()


async def test_every_one_byte_change_of_a_signed_delivery_is_refused_and_a_replay_stores_once(
    gateway, sync_engine, figures
):
    tenant = await build_tenant(gateway.http, gateway.url, gateway.fake, "T", session=False)
    text = f"tamper me {secrets.token_hex(4)}"
    message = g.text_message(tenant.user, text)
    send = gateway.fake.webhooks(f"{gateway.url}/api/whatsapp/webhook", tenant.app_secret)
    body = g.serialize(send.inbound_payload(tenant.pnid, message))
    signature = g.sign(body, tenant.app_secret)
    await send.close()
    url = f"{gateway.url}/api/whatsapp/webhook"
    text_at = body.index(text.encode())
    inside = range(text_at, text_at + len(text))

    async def post(data: bytes) -> tuple[int, str]:
        return await g.deliver(url, data, "", signature=signature, session=gateway.http)

    statuses: Counter[int] = Counter()
    problems = []
    positions = list(range(len(body)))
    for start in range(0, len(positions), 16):
        batch = positions[start : start + 16]
        changed = [body[:i] + bytes([_other(body[i])]) + body[i + 1 :] for i in batch]
        for i, (status, answer) in zip(batch, await asyncio.gather(*(post(c) for c in changed)), strict=True):
            statuses[status] += 1
            if status >= 500 or (i in inside and status != 401):
                problems.append(f"byte {i} ({chr(body[i])!r}): {status} {answer[:120]}")
            elif status == 200 and (json.loads(answer)["messages"] or json.loads(answer)["statuses"]):
                problems.append(f"byte {i}: acknowledged as stored: {answer[:120]}")
    stored_after_tampering = _stored(sync_engine, message["id"])

    replays = 5
    answers = [await post(body) for _ in range(replays)]
    figures(
        "webhook tampering and replay",
        body_bytes=len(body),
        one_byte_changes=len(positions),
        statuses=dict(sorted(statuses.items())),
        stored_from_tampered=stored_after_tampering,
        replays=replays,
        stored_after_replays=_stored(sync_engine, message["id"]),
    )
    assert not problems, "\n".join(problems)
    assert stored_after_tampering == 0
    assert {status for status, _ in answers} == {200}
    assert _stored(sync_engine, message["id"]) == 1
