"""How the inbound writer groups what was handed over into one batch (pure, no I/O): per tenant, runs
of inbound and phone-typed messages in hand-over order, then changes, statuses and notices; Cloud
messages of several deliveries in their delivery order (``messaging/inbound.py`` states the
ordering guarantee)."""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass, field
from itertools import count, islice
from typing import Any

from control_plane.db.inbound import TenantWork

Delivery = list[TenantWork]  # one hand-over: what it stores, per tenant
Run = tuple[str, list[dict[str, Any]]]  # ("messages" | "phone", items)
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass
class TenantBatch:
    """One tenant's part of a batch: message runs in order, then changes, statuses and notices."""

    runs: list[Run]
    statuses: list[dict[str, Any]]
    changes: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)


def per_tenant(batch: list[Delivery]) -> dict[str, TenantBatch]:
    """The batch per tenant, in hand-over order: runs of inbound and phone-typed messages (a new
    run where the kind changes), then the statuses. Cloud messages of several deliveries are put
    in their delivery order (see the module docstring)."""
    parts: dict[str, TenantBatch] = {}
    sources: dict[str, list[int]] = {}  # per tenant: the delivery of each message of its last run
    for number, delivery in enumerate(batch):
        for work in delivery:
            part = parts.get(work.tenant_id)
            if part is None:
                part = parts[work.tenant_id] = TenantBatch([], [], [])
                sources[work.tenant_id] = []
            for kind, items in (("messages", work.messages), ("phone", work.phone)):
                if not items:
                    continue
                if part.runs and part.runs[-1][0] == kind:
                    part.runs[-1][1].extend(items)
                else:
                    part.runs.append((kind, list(items)))
                    sources[work.tenant_id] = []
                sources[work.tenant_id].extend([number] * len(items))
            part.statuses.extend(work.statuses)
            part.changes.extend(work.changes)
            part.notices.extend(work.notices)
    for tenant_id, part in parts.items():
        numbers = sources[tenant_id]  # in hand-over order: several deliveries when the ends differ
        if len(part.runs) == 1 and part.runs[0][0] == "messages" and numbers[0] != numbers[-1]:
            part.runs[0] = ("messages", delivery_order(part.runs[0][1], sources[tenant_id]))
    return parts


def delivery_order(items: list[dict[str, Any]], deliveries: list[int]) -> list[dict[str, Any]]:
    """Cloud messages of several deliveries: each delivery's messages of one contact stay together
    and in their order; such blocks go by their first message's timestamp, then arrival. Web
    messages (or a mix) keep their arrival order."""
    if any(item["provider"] != "business_api" for item in items):
        return items
    first: dict[tuple[int, str], dt.datetime] = {}
    setdefault = first.setdefault
    ats = [
        setdefault((number, item.get("bsuid") or item["wa_id"]), item.get("provider_timestamp") or _EPOCH)
        for item, number in zip(items, deliveries, strict=True)
    ]
    # Deliveries and positions only grow along the list: block times that never go down are the order.
    if all(map(operator.le, ats, islice(ats, 1, None))):
        return items
    keyed = sorted(zip(ats, deliveries, count()))  # unique keys: sorted as (time, delivery, position)
    return [items[k[2]] for k in keyed]


def messages_only(per_tenant: dict[str, TenantBatch]) -> bool:
    return all(
        not part.statuses
        and not part.changes
        and not part.notices
        and len(part.runs) == 1
        and part.runs[0][0] == "messages"
        for part in per_tenant.values()
    )
