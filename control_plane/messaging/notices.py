"""Notices (``TenantWork.notices``: changes of webhook fields other than messages, read by
``webhooks/fields.py``) stored by the inbound writer, after a batch's messages and statuses, in its
transaction: each kept raw once (``provider_events``; a redelivery stops here), applied to what the
gateway stores (a template's status, quality score or category; a contact's marketing preference),
and its events added to the batch's unit (published once the batch commits).
"""

from __future__ import annotations

from typing import Any

from control_plane import events as event_types
from control_plane.db import provider_events as provider_events_db
from control_plane.db import templates as templates_db
from control_plane.db.engine import utcnow
from control_plane.realtime.unit import Unit


async def store_notices(unit: Unit[Any], tenant_id: str, notices: list[dict[str, Any]]) -> int:
    """Store, apply and publish the new ones; returns how many were new."""
    stored = 0
    for notice in notices:
        if not await provider_events_db.record_provider_event(unit.conn, tenant_id, notice):
            continue  # delivered before: stored, applied and published then
        applied = await _apply(unit.conn, tenant_id, notice)
        for type_, data in notice["events"]:
            if type_ == event_types.CONTACT_PREFERENCES:
                # Shared by every tenant of the delivery: a copy per tenant.
                data = {**data, "applied": applied.get((data["wa_id"], data["category"]), False)}
            unit.add(tenant_id, type_, data)
        stored += 1
    return stored


async def _apply(conn: Any, tenant_id: str, notice: dict[str, Any]) -> dict[tuple[str, str], bool]:
    """The notice's effect on the tenant's templates and contact preferences; per (wa_id, category)
    whether the preference was applied (False: a newer one is stored)."""
    template = notice.get("template")
    if template and template["values"]:
        await templates_db.apply_template_notice(
            conn,
            tenant_id,
            template_id=template["template_id"],
            name=template["name"],
            language=template["language"],
            values=template["values"],
        )
    applied: dict[tuple[str, str], bool] = {}
    for pref in notice.get("preferences") or ():
        changed_at = pref["changed_at"] or notice.get("occurred_at") or utcnow()
        applied[(pref["wa_id"], pref["category"])] = await provider_events_db.set_contact_preference(
            conn,
            tenant_id,
            wa_id=pref["wa_id"],
            category=pref["category"],
            value=pref["value"],
            changed_at=changed_at,
            detail=pref["detail"],
            user_id=pref["user_id"],
        )
    return applied
