"""The shared MetaData and column types. Tables are declared next to the queries that use them."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

# Microsecond timestamps on MariaDB (DATETIME defaults to whole seconds there); UTC, naive.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# BIGINT on MariaDB; INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Tenant ids are 32 lower-case hex characters (uuid4().hex): safe as folder names. Message ids are
# made the same way. ``TENANT_ID_RE.match(value)`` is the one check for either (``\Z``: no newline).
TenantId = sa.String(32)
TENANT_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
HEX_ID_RE = TENANT_ID_RE
# Large JSON/text payloads: TEXT on SQLite, MEDIUMTEXT on MariaDB (TEXT stops at 64 KiB there).
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


# A provider's error code ("131047", "bridge_not_on_whatsapp"): 255 characters (migration 0011).
ERROR_CODE_LEN = 255


def error_columns() -> tuple[sa.Column[Any], sa.Column[Any]]:
    """``error_code`` (the provider's code, up to ``ERROR_CODE_LEN`` characters) and ``error_message``;
    NULL when there is no error."""
    return (
        sa.Column("error_code", sa.String(ERROR_CODE_LEN), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
    )
