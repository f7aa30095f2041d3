"""Unified messaging: the outbox, per-tenant dispatch with routing between the Web session
and the Cloud API, the rate governor, and Web-session ingest.

    models.py      POST /api/messages validation per type -> (wa_id, type, content)
    outbox.py      enqueue with idempotency (the row is committed before the 202)
    routing.py     policy -> road, with a recorded reason (pure)
    governor.py    per-number / per-pair / per-session pacing (in-process or Redis)
    dispatcher.py  claim, route, send (the remaining duplicate window)
    recorder.py    what each send came to, stored by one group-commit writer, then published
    send_journal.py  each send written down as it leaves and when answered (DATA_DIR), per process
    recovery.py    crash recovery: a dead process's claims from its journal, leases, unknown outcomes
    inbound.py     the inbound service: both roads' messages and statuses, in delivery order
    web_ingest.py  bridge message / message_ack -> the inbound service
"""

from __future__ import annotations

import logging

from aiohttp import web

from control_plane.db import Database
from control_plane.messaging.dispatcher import Dispatcher
from control_plane.providers.cloud_api import CloudAPIClient

log = logging.getLogger(__name__)


async def dispatcher_context(app: web.Application):
    """``app["dispatcher"]``: started after the supervisor (it listens to its bridge events), stopped
    before it (sends in flight finish and are recorded first)."""
    settings = app["settings"]
    app["dispatcher"] = None
    if not settings.messaging_enabled:
        log.info("messaging dispatcher disabled (MESSAGING_ENABLED=false)")
        yield
        return
    own_client = None
    cloud_api = app.get("cloud_api")
    if cloud_api is None:
        own_client = cloud_api = await CloudAPIClient.create(settings.graph_api_url)
    db = dispatch_database(settings.database_url)
    dispatcher = Dispatcher(
        db=db,
        settings=settings,
        secret_box=app["secret_box"],
        cloud_api=cloud_api,
        supervisor=app.get("supervisor"),
        events=app.get("events"),
        redis=app.get("redis"),
        inbound=app.get("inbound"),
    )
    await dispatcher.start()
    app["dispatcher"] = dispatcher
    try:
        yield
    finally:
        await dispatcher.close()
        if own_client is not None:
            await own_client.close()
        await db.close()


def dispatch_database(url: str) -> Database:
    """The dispatcher's own pool. On MariaDB its transactions run READ COMMITTED: claims (``FOR UPDATE
    SKIP LOCKED``) and outcome records touch neighbouring entries of the outbox's state index, and
    REPEATABLE READ's gap locks made them wait on (and deadlock with) each other."""
    return Database(url, pool_size=10, isolation_level="READ COMMITTED")
