"""What the webhook route hands its verified deliveries to: the app's inbound service.

The storing is the inbound service's (``messaging/inbound.py``, ``app["inbound"]``: one writer for
both roads, group commit, durable before 200); webhooks and messaging are siblings, so the route
knows it only by this Protocol and gets it from the app (``app["webhook_ingester"]``).
"""

from __future__ import annotations

from typing import Any, Protocol

from control_plane.db.inbound import TenantWork

__all__ = ["TenantWork", "WebhookIngester"]


class WebhookIngester(Protocol):
    """Stores a delivery's messages and statuses (per tenant, provider-neutral ``TenantWork``s)."""

    stats: Any  # counters with ``as_dict()`` (benchmarks, metrics)

    async def submit(self, works: list[TenantWork]) -> None:
        """Returns once stored (committed). Raises ``errors.Unavailable`` (503: Meta redelivers)."""
        ...
