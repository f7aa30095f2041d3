"""The one id pattern (tenant ids and message ids: uuid4().hex)."""

from __future__ import annotations

import uuid

import pytest

from control_plane.db.metadata import HEX_ID_RE, TENANT_ID_RE

pytestmark = pytest.mark.smoke


def test_tenant_id_pattern():
    assert HEX_ID_RE is TENANT_ID_RE
    assert TENANT_ID_RE.match(uuid.uuid4().hex)
    for bad in ("", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 32 + "\n", "../" + "0" * 29, None):
        assert not (isinstance(bad, str) and TENANT_ID_RE.match(bad)), bad
