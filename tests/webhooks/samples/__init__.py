"""Meta's documented webhook deliveries, kept in JSON next to their sources (``fields/fields.json``: each
sample says where it was copied from and what was changed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_FIELDS = json.loads((Path(__file__).parent / "fields" / "fields.json").read_text())
FIELD_SAMPLES = sorted(k for k in _FIELDS if not k.startswith("_"))


def sample(name: str, *, waba: str | None = None, pnid: str | None = None, **value: Any) -> dict[str, Any]:
    """A copy of sample ``name`` addressed to ``waba`` (entry.id) and ``pnid``
    (value.metadata.phone_number_id, where the sample has one); ``value`` keys replace the first
    change's value keys (e.g. ``message_template_id``)."""
    payload = copy.deepcopy(_FIELDS[name]["payload"])
    for entry in payload["entry"]:
        if waba is not None:
            entry["id"] = waba
        for change in entry["changes"]:
            metadata = change["value"].get("metadata")
            if pnid is not None and metadata is not None:
                metadata["phone_number_id"] = pnid
    payload["entry"][0]["changes"][0]["value"].update(value)
    return payload


def source(name: str) -> str:
    return _FIELDS[name]["source"]
