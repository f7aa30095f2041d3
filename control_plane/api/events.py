"""``GET /api/events``: the tenant's event log over HTTP, for consumers that poll instead of
holding a Socket.IO connection. Same envelopes, same seqs."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import Field

from control_plane.db import events as events_db
from control_plane.events import format_ts
from control_plane.http.models import QueryModel, ResponseModel
from control_plane.http.routing import Router

TAGS = ("events",)
router = Router(tags=TAGS, auth="tenant")


class EventsQuery(QueryModel):
    since: int = Field(default=0, ge=0, le=2**62, description="Return events with seq greater than this.")
    limit: int = Field(default=100, ge=1, le=1000)


class EventOut(ResponseModel):
    seq: int
    tenant_id: str
    type: str
    ts: str = Field(description="ISO 8601 UTC, milliseconds, 'Z'")
    data: dict[str, Any]


class EventsPage(ResponseModel):
    events: list[EventOut]
    next_since: int = Field(description="Pass as ?since= for the next page (the last seq returned).")
    has_more: bool


@router.route(
    "GET",
    "/api/events",
    summary="Events after a seq (polling)",
    query=EventsQuery,
    response=EventsPage,
    errors=(401, 403, 404, 422),
)
async def list_events(request: web.Request, query: EventsQuery) -> dict[str, Any]:
    tenant_id = request["tenant"]["id"]
    async with request.app["db"].connect() as conn:
        rows = await events_db.events_after(conn, tenant_id, query.since, limit=query.limit + 1)
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    events = [
        {
            "seq": r["seq"],
            "tenant_id": tenant_id,
            "type": r["type"],
            "ts": format_ts(r["ts"]),
            "data": json.loads(r["data"]),
        }
        for r in rows
    ]
    return {"events": events, "next_since": rows[-1]["seq"] if rows else query.since, "has_more": has_more}
