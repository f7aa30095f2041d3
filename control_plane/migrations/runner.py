"""Apply or roll back migrations programmatically (CLI, app start-up in embedded mode, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    return ScriptDirectory(str(HERE)).get_current_head()  # type: ignore[return-value]


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory(str(HERE))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]
