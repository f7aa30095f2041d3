"""Business API message templates: a mirror of the WABA's list (synced from the Graph API)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.db.conversations import BigId, clip
from control_plane.db.engine import utcnow
from control_plane.db.messages import dump_json, load_json
from control_plane.db.metadata import LongText, TenantId, Timestamp, metadata

log = logging.getLogger(__name__)

# Meta's limits: a template name up to 512 characters; its id (digits) stored whole too (migration
# 0011). A template past them (or a language past 16) is not synced: refused, logged, never cut.
TEMPLATE_NAME_LEN = 512
REMOTE_ID_LEN = 255
LANGUAGE_LEN = 16

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TenantId, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("waba_id", sa.String(64), nullable=True),
    sa.Column("name", sa.String(TEMPLATE_NAME_LEN), nullable=False),
    sa.Column("language", sa.String(LANGUAGE_LEN), nullable=False),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("category", sa.String(32), nullable=True),
    sa.Column("components", LongText, nullable=False),
    sa.Column("remote_id", sa.String(REMOTE_ID_LEN), nullable=True),
    sa.Column("synced_at", Timestamp, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("quality_score", sa.String(16), nullable=True),  # GREEN/YELLOW/RED/UNKNOWN (0007)
    sa.UniqueConstraint("tenant_id", "name", "language"),
)


# ------------------------------------------------------------------------------------------- templates


async def replace_templates(
    conn: AsyncConnection, tenant_id: str, waba_id: str | None, items: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Mirror the WABA's template list: upsert every (name, language); delete the tenant's templates the
    Graph API no longer lists. Items are Graph API template objects."""
    now = utcnow()
    existing = {
        (r.name, r.language): r.id
        for r in await conn.execute(
            sa.select(templates.c.id, templates.c.name, templates.c.language).where(
                templates.c.tenant_id == tenant_id
            )
        )
    }
    seen: set[tuple[str, str]] = set()
    created = updated = 0
    for item in items:
        name, language = str(item.get("name") or ""), str(item.get("language") or "")
        if not name or not language or (name, language) in seen:
            continue
        remote_id = str(item["id"]) if item.get("id") is not None else None
        too_long = len(name) > TEMPLATE_NAME_LEN or len(language) > LANGUAGE_LEN
        if too_long or len(remote_id or "") > REMOTE_ID_LEN:
            log.warning("tenant=%s template not synced: its name, language or id is too long", tenant_id)
            continue
        seen.add((name, language))
        values = {
            "waba_id": waba_id,
            "status": clip(item.get("status"), 32),
            "category": clip(item.get("category"), 32),
            "components": dump_json(item.get("components") or []),
            "remote_id": remote_id,
            "synced_at": now,
            "updated_at": now,
        }
        if (name, language) in existing:
            await conn.execute(
                templates.update()
                .where(templates.c.tenant_id == tenant_id, templates.c.id == existing[(name, language)])
                .values(**values)
            )
            updated += 1
        else:
            await conn.execute(
                templates.insert().values(
                    tenant_id=tenant_id,
                    name=name,
                    language=language,
                    created_at=now,
                    **values,
                )
            )
            created += 1
    gone = [tid for key, tid in existing.items() if key not in seen]
    if gone:
        await conn.execute(
            templates.delete().where(templates.c.tenant_id == tenant_id, templates.c.id.in_(gone))
        )
    return {"created": created, "updated": updated, "deleted": len(gone), "total": len(seen)}


async def list_templates(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(templates)
        .where(templates.c.tenant_id == tenant_id)
        .order_by(templates.c.name, templates.c.language)
    )
    out = []
    for r in result:
        row = dict(r._mapping)
        row["components"] = load_json(row["components"]) or []
        out.append(row)
    return out


async def get_template(
    conn: AsyncConnection, tenant_id: str, name: str, language: str
) -> dict[str, Any] | None:
    result = await conn.execute(
        sa.select(templates).where(
            templates.c.tenant_id == tenant_id, templates.c.name == name, templates.c.language == language
        )
    )
    row = result.first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["components"] = load_json(out["components"]) or []
    return out


_NOTICE_COLUMNS = {"status": 32, "category": 32, "quality_score": 16}  # what notices set, their lengths


def _same_language(stored: str, given: str) -> bool:
    """Meta's webhooks write ``en-US`` where its template list says ``en_US``."""
    return stored.replace("-", "_").lower() == given.replace("-", "_").lower()


async def apply_template_notice(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    template_id: str | None,
    name: str | None,
    language: str | None,
    values: dict[str, Any],
) -> list[dict[str, Any]]:
    """A template webhook (status, quality score, category): set ``values`` (``status``,
    ``quality_score``, ``category``) on the template Meta names: by its id (``remote_id``), else by
    name and language (every language when none is given). Templates we have not synced are left
    alone. Returns the matched rows as they were before (``id``, ``name``, ``language``, ``status``,
    ``category``, ``quality_score``)."""
    t = templates.c
    match = []
    if template_id:
        match.append(t.remote_id == template_id)
    if name:
        match.append(t.name == name)
    if not match:
        return []
    result = await conn.execute(
        sa.select(t.id, t.name, t.language, t.status, t.category, t.quality_score, t.remote_id).where(
            t.tenant_id == tenant_id, sa.or_(*match)
        )
    )
    rows = [dict(r._mapping) for r in result]
    by_id = [r for r in rows if template_id and r["remote_id"] == template_id]
    if not by_id:  # not synced since Meta gave it an id, or no id given
        by_id = [
            r for r in rows if r["name"] == name and (not language or _same_language(r["language"], language))
        ]
    if by_id and values:
        clipped = {k: clip(v, _NOTICE_COLUMNS[k]) for k, v in values.items()}
        await conn.execute(
            templates.update()
            .where(t.tenant_id == tenant_id, t.id.in_([r["id"] for r in by_id]))
            .values(**clipped, updated_at=utcnow())
        )
    for r in by_id:
        r.pop("remote_id")
    return by_id


async def template_categories(
    conn: AsyncConnection, tenant_id: str, names: list[tuple[str, str]]
) -> dict[tuple[str, str], str | None]:
    """(name, language) -> the category of the tenant's synced template (absent: not synced)."""
    wanted = {n for n, _ in names}
    if not wanted:
        return {}
    t = templates.c
    result = await conn.execute(
        sa.select(t.name, t.language, t.category).where(t.tenant_id == tenant_id, t.name.in_(sorted(wanted)))
    )
    return {(n, lang): category for n, lang, category in result}
