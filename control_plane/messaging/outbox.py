"""Enqueue: the message row is committed (status queued) before the API answers 202.

Idempotency: ``(tenant, idempotency_key)`` is UNIQUE in the outbox. The same key with the same
request returns the message created the first time (whatever its status now) and never sends again;
the same key with a different request is a 409. Concurrent duplicates race on the unique index: the
loser's transaction (its message row included) rolls back and it returns the winner's message.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane import errors
from control_plane.db import messages as messages_db
from control_plane.db import outbox as outbox_db
from control_plane.db import templates as templates_db
from control_plane.db.sql import retry_on_deadlock
from control_plane.messaging import models, optout

log = logging.getLogger(__name__)


async def enqueue(
    db: Any,
    tenant_id: str,
    body: models.SendMessageIn,
    *,
    idempotency_key: str | None = None,
    templates_known: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Validate and store one outbound message. Returns (message row, created)."""
    wa_id, kind, content = models.normalize(body)
    key = body.idempotency_key or idempotency_key
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise errors.InvalidInput(
            "the Idempotency-Key header and idempotency_key differ",
            code="invalid_field",
            field="idempotency_key",
        )
    digest = models.request_hash(wa_id, kind, content, body.provider)
    if key is not None:
        existing = await _existing(db, tenant_id, key, digest)
        if existing is not None:
            return existing, False
    if kind == "template" and templates_known:
        tpl = content
        async with db.connect() as conn:
            known = await templates_db.get_template(conn, tenant_id, tpl["name"], tpl["language"])
            models.check_template_against_known(tpl, known)
            await optout.check_enqueue(conn, tenant_id, wa_id, known)
    try:
        row = await _insert(
            db,
            tenant_id,
            wa_id=wa_id,
            type=kind,
            content=content,
            requested_provider=body.provider,
            idempotency_key=key,
            request_hash=digest if key else None,
        )
    except IntegrityError:
        if key is None:
            raise
        existing = await _existing(db, tenant_id, key, digest)
        if existing is None:  # not a key clash after all
            raise
        return existing, False
    return row, True


async def _insert(db: Any, tenant_id: str, **values: Any) -> dict[str, Any]:
    """One transaction; MariaDB deadlocks between concurrent first messages to one contact (the
    conversation upsert's gap locks) are retried."""

    async def attempt() -> dict[str, Any]:
        # No read before the conversation upsert: under REPEATABLE READ an earlier read would fix
        # the snapshot and hide a conversation a concurrent request just created.
        async with db.begin() as conn:
            return await outbox_db.enqueue(conn, tenant_id, **values)

    return await retry_on_deadlock(attempt, attempts=10, what=f"enqueue tenant={tenant_id}")


async def _existing(db: Any, tenant_id: str, key: str, digest: str) -> dict[str, Any] | None:
    async with db.connect() as conn:
        box = await outbox_db.find_by_idempotency_key(conn, tenant_id, key)
        if box is None:
            return None
        if box["request_hash"] != digest:
            raise errors.Conflict(
                "this idempotency_key was already used for a different request",
                code="idempotency_key_reused",
                field="idempotency_key",
            )
        return await messages_db.get_message(conn, tenant_id, box["message_id"])
