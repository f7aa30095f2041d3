"""The data layer: the only place with SQL. One module per concern, functions named for what they do.

Every tenant-owned table has ``tenant_id`` and every function touching it takes ``tenant_id`` and
filters by it, so a caller cannot forget the scope.

``sql.py`` holds what the MariaDB fast paths share (the one SQL literal quoter, driver round trips,
driver-error translation, deadlock retry, the dialect checks); ``metadata.py`` the column types and
the id pattern. A function with a fast path has a SQLAlchemy Core twin (SQLite, and MariaDB inside
``sql.core_paths()``, which tests use to compare the two).
"""

from control_plane.db.engine import Database, DatabaseUnavailable, utcnow
from control_plane.db.metadata import metadata

# Importing the table modules registers their tables on ``metadata`` (delete_tenant and the test
# reset walk it). Add new modules here.
from control_plane.db import events, messages, tenants, whatsapp_config  # noqa: F401  isort: skip
from control_plane.db import sessions  # noqa: F401  isort: skip
from control_plane.db import outbox  # noqa: F401  isort: skip
from control_plane.db import conversations, inbound, status_facts, templates  # noqa: F401  isort: skip
from control_plane.db import provider_events  # noqa: F401  isort: skip
from control_plane.db import message_changes  # noqa: F401  isort: skip

__all__ = ["Database", "DatabaseUnavailable", "metadata", "utcnow"]
