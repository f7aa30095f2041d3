"""schemathesis hooks for ``test_schemathesis.py`` (loaded by the CLI through its ``hooks`` setting).

Two rules of ``POST /api/messages`` compare items of a list with each other, which JSON Schema cannot
state: reply button ids are unique, and a list has at most 10 rows over all its sections (both in
the operation's descriptions, and Meta's own rules). Cases that break them are left out, the ones only
they would refuse; every other rule is in the document and the fuzzer holds the server to it."""

from __future__ import annotations

from typing import Any

import schemathesis


def breaks_cross_item_rules(body: Any) -> bool:
    interactive = body.get("interactive") if isinstance(body, dict) else None
    action = interactive.get("action") if isinstance(interactive, dict) else None
    if not isinstance(action, dict):
        return False
    buttons = action.get("buttons")
    if isinstance(buttons, list):
        ids = [
            b["reply"].get("id") for b in buttons if isinstance(b, dict) and isinstance(b.get("reply"), dict)
        ]
        if len(ids) != len(set(map(repr, ids))):
            return True
    sections = action.get("sections")
    if isinstance(sections, list):
        rows = sum(
            len(s["rows"]) for s in sections if isinstance(s, dict) and isinstance(s.get("rows"), list)
        )
        return rows > 10
    return False


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return not breaks_cross_item_rules(case.body)
