"""What sending needs from the stored conversations and messages, beside the outbox.

- :class:`References`: ``reply_to`` and a reaction's ``message_id`` may name one of our message ids;
  the provider that carried it wants its own id (the providers' ``ResolveReference``).
- :class:`CanonicalAdopter`: the Cloud API answered a send with another id for the contact than the
  one we sent to; the conversation takes that canonical wa_id, off the send path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane.db import messages as messages_db
from control_plane.db.metadata import HEX_ID_RE as _OUR_ID

log = logging.getLogger(__name__)


class References:
    def __init__(self, db: Any) -> None:
        self.db = db

    async def resolve(self, tenant_id: str, ref: str, provider: str) -> str:
        """The provider's id for ``ref`` when it names our message carried by ``provider``; else
        ``ref`` as given."""
        if not _OUR_ID.match(ref):
            return ref
        async with self.db.connect() as conn:
            msg = await messages_db.get_message(conn, tenant_id, ref)
        if msg and msg["provider_message_id"] and msg["provider"] == provider:
            return str(msg["provider_message_id"])
        return ref


class CanonicalAdopter:
    """Best effort, in background tasks it owns (one per conversation at a time)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._adopting: set[tuple[str, int]] = set()  # conversations taking a canonical wa_id
        self._tasks: set[asyncio.Task] = set()

    def adopt(self, tenant_id: str, conversation_id: int, old: str, new: str) -> None:
        key = (tenant_id, conversation_id)
        if key in self._adopting:
            return
        self._adopting.add(key)
        task = asyncio.create_task(self._adopt(key, old, new), name=f"adopt-wa-id-{conversation_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, grace_s: float) -> None:
        """Let adoptions under way finish (up to ``grace_s``)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)

    async def _adopt(self, key: tuple[str, int], old: str, new: str) -> None:
        tenant_id, conversation_id = key
        try:
            async with self.db.begin() as conn:
                changed = await messages_db.adopt_canonical_wa_id(conn, tenant_id, conversation_id, old, new)
            if changed:
                log.info(
                    "conversation %s takes the canonical wa_id %s (sent to %s) tenant=%s",
                    conversation_id,
                    new,
                    old,
                    tenant_id,
                )
        except IntegrityError:
            log.warning(
                "conversation %s: another conversation already has the canonical wa_id %s "
                "(sent to %s); both kept tenant=%s",
                conversation_id,
                new,
                old,
                tenant_id,
            )
        except Exception:
            log.exception(
                "conversation %s: cannot take the canonical wa_id tenant=%s", conversation_id, tenant_id
            )
        finally:
            self._adopting.discard(key)
