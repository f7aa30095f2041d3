"""Column types and columns the migrations share. Applied migrations must never change what they
build, so nothing here changes either: a different type or option is a new name, next to the old."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# Microsecond timestamps on MariaDB (DATETIME alone keeps whole seconds); naive UTC.
TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# TEXT on SQLite, MEDIUMTEXT on MariaDB (TEXT stops at 64 KiB there).
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# BIGINT on MariaDB; INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def tenant_fk(table: str, primary_key: bool = False) -> sa.Column[Any]:
    """``tenant_id``, deleted with its tenant."""
    return sa.Column(
        "tenant_id",
        sa.String(32),
        sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{table}_tenant_id_tenants"),
        nullable=False,
        primary_key=primary_key,
    )


def message_fk(table: str, primary_key: bool = False) -> sa.Column[Any]:
    """``message_id``, deleted with its message."""
    return sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE", name=f"fk_{table}_message_id_messages"),
        nullable=False,
        primary_key=primary_key,
    )


def timestamps() -> tuple[sa.Column[Any], sa.Column[Any]]:
    """``created_at`` and ``updated_at``, both required."""
    return sa.Column("created_at", TS, nullable=False), sa.Column("updated_at", TS, nullable=False)


def error_columns() -> tuple[sa.Column[Any], sa.Column[Any]]:
    """``error_code`` and ``error_message``, both optional."""
    return (
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
    )


def tenant_row(table: str) -> tuple[sa.Column[Any], sa.Column[Any]]:
    """The first columns of a tenant's table of facts: an autoincrementing ``id`` and ``tenant_id``."""
    return sa.Column("id", BIG_ID, primary_key=True, autoincrement=True), tenant_fk(table)


def unique(table: str, *columns: str) -> sa.UniqueConstraint:
    """A unique constraint named as the metadata's naming convention names it."""
    return sa.UniqueConstraint(*columns, name=f"uq_{table}_{'_'.join(columns)}")
