"""The tenant directory under forged ids: lookups in slices of one query, unknown ids cached within a
bound without pushing known ones out, and the one-line-per-delivery log of unknown ids."""

from __future__ import annotations

import asyncio
import logging

from control_plane.db import whatsapp_config as config_db
from control_plane.webhooks.directory import LOOKUP_CHUNK, MAX_ID_LENGTH, TenantDirectory, UnknownLog


async def test_unknown_ids_are_cached_within_a_bound_and_never_push_known_ones_out(
    app_client, business_tenant, monkeypatch
):
    tenant = await business_tenant()
    app = app_client.server.app
    directory = TenantDirectory(app["db"], app["secret_box"], max_absent=1_500)
    queries: list[int] = []
    real = config_db.find_webhook_targets

    async def counted(conn, ids):
        queries.append(len(ids))
        return await real(conn, ids)

    monkeypatch.setattr(config_db, "find_webhook_targets", counted)
    known = await directory.resolve((tenant["pnid"],), ())
    assert known.numbers[tenant["pnid"]].tenant_id == tenant["id"]
    fresh = tuple(f"9{i:09d}" for i in range(5 * LOOKUP_CHUNK))
    resolved = await directory.resolve(fresh, ())
    assert queries == [1] + [LOOKUP_CHUNK] * 5
    assert resolved.unknown() == (list(fresh), []) and resolved.app_secrets() == {}
    assert directory.cached(tenant["pnid"]).tenant_id == tenant["id"]  # not pushed out
    assert sum(directory.cached(p) is None for p in fresh) == 1_500  # the newest, within the bound
    assert directory.cached(fresh[-1]) is None and directory.cached(fresh[0]) is False
    queries.clear()
    await directory.resolve(fresh[-1_000:], ())
    await directory.resolve(("9" * (MAX_ID_LENGTH + 1),), ())  # longer than any stored id
    assert queries == []
    # concurrent deliveries naming the same new ids share one query
    again = tuple(f"8{i:09d}" for i in range(300))
    first, second = await asyncio.gather(directory.resolve(again, ()), directory.resolve(again, ()))
    assert queries == [300] and first == second


def test_ids_longer_than_the_columns_cannot_be_anyones():
    for name in ("phone_number_id", "waba_id"):
        assert config_db.whatsapp_config.c[name].type.length == MAX_ID_LENGTH


def test_unknown_ids_are_one_line_per_delivery_and_at_most_one_a_second(caplog):
    caplog.set_level(logging.INFO, logger="control_plane")
    now = [100.0]
    unknown = UnknownLog(1.0, clock=lambda: now[0])
    unknown.note([str(i) for i in range(40_000)], [])
    for _ in range(50):
        unknown.note(["1", "2"], ["3"])
    unknown.note([], [])  # names nothing unknown: nothing to say
    now[0] += 1.0
    unknown.note(["7"], [])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unknown phone_number_id x40000 [0,1,2,...]" in lines[0]
    assert "and 50 deliveries since the last line naming 150 unknown ids" in lines[1]
