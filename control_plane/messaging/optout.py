"""Marketing opt-out: a contact who stopped marketing messages (Meta's ``user_preferences`` webhook,
``value: "stop"``) gets no MARKETING-category template until they resume.

Checked twice: when the message is queued (``POST /api/messages`` answers 422 ``contact_opted_out``
when the contact has stopped and the tenant's synced template is MARKETING), and when the dispatcher
claims it (the stop may arrive while it waits: it fails with ``message.failed``,
``error.code: "contact_opted_out"``). Utility and authentication templates and free-form messages are
not affected; a template the tenant never synced has no known category and is let through (Meta
refuses it then, error 131050). A later ``resume`` lifts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from control_plane import errors
from control_plane.db import provider_events as provider_events_db
from control_plane.db import templates as templates_db

CODE = "contact_opted_out"
MESSAGE = (
    "the contact stopped marketing messages from this business (WhatsApp): MARKETING templates are not "
    "sent to them until they resume"
)


def is_marketing(category: Any) -> bool:
    return isinstance(category, str) and category.upper() == "MARKETING"


async def check_enqueue(conn: Any, tenant_id: str, wa_id: str, template: dict[str, Any] | None) -> None:
    """Raise 422 ``contact_opted_out`` when ``template`` (the tenant's synced row) is MARKETING and
    the contact has stopped marketing messages."""
    if template is None or not is_marketing(template.get("category")):
        return
    if await provider_events_db.marketing_stopped(conn, tenant_id, [wa_id]):
        raise errors.InvalidInput(MESSAGE, code=CODE, field="to")


async def blocked(db: Any, tenant_id: str, sends: Sequence[tuple[str, dict[str, Any]]]) -> set[int]:
    """Of ``sends`` (``(wa_id, template {name, language})``), the positions that must not go: a
    MARKETING template to a contact who stopped. One query when none of the contacts stopped."""
    if not sends:
        return set()
    async with db.connect() as conn:
        stopped = await provider_events_db.marketing_stopped(conn, tenant_id, [w for w, _ in sends])
        if not stopped:
            return set()
        keys = [(str(t.get("name")), str(t.get("language"))) for _, t in sends]
        categories = await templates_db.template_categories(
            conn, tenant_id, [k for (w, _), k in zip(sends, keys, strict=True) if w in stopped]
        )
    return {
        i
        for i, ((wa_id, _), key) in enumerate(zip(sends, keys, strict=True))
        if wa_id in stopped and is_marketing(categories.get(key))
    }


async def blocked_rows(db: Any, tenant_id: str, rows: list[dict[str, Any]]) -> set[str]:
    """The message ids of claimed template rows ``blocked`` refuses."""
    tpl_rows = [r for r in rows if r["type"] == "template" and isinstance(r.get("content"), dict)]
    if not tpl_rows:
        return set()
    positions = await blocked(db, tenant_id, [(r["wa_id"], r["content"]) for r in tpl_rows])
    return {tpl_rows[i]["message_id"] for i in positions}
