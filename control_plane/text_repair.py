"""Text that is no Unicode: lone UTF-16 surrogates (``"\\ud800"`` in JSON) found, repaired, flagged.

JSON may escape any UTF-16 code unit, so ``"\\ud800"`` (a high surrogate with no low one after it)
is valid JSON that decodes to a Python string no UTF-8 encoder accepts: MariaDB, the event log and
every JSON client would refuse it. WhatsApp clients and whatsapp-web.js do produce such text (an emoji
cut in half by a length limit), so it reaches us from Meta's webhooks and from the bridge.

What the gateway does with it (docs/EVENTS.md, "Text that is no Unicode"):

- incoming text (a webhook delivery, a bridge line): every lone surrogate becomes U+FFFD (the
  replacement character) in every string, keys included; a well-formed pair that arrived as two
  separate code units (UTF-8 bytes of surrogates, CESU-8) becomes the character it encodes. A message
  object whose text was repaired gets ``WARNINGS_KEY``: a list of ``{"code": "invalid_unicode",
  "path", "message"}`` that the parsers move into the stored ``content.warnings``. The rest of the
  delivery is stored as usual; the repair is deterministic, so a redelivery is the same and is stored
  once (ids included);
- a request to the API: refused, 422 ``invalid_unicode`` naming the field (``find_lone_surrogate``).

Cost for clean input: ``may_have_lone_surrogates(raw)`` (a few C-speed substring searches over the
raw bytes; escaped pairs, i.e. emoji, dropped before the last one) says no, and nothing is walked.
Only when it says maybe are the parsed strings walked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

CODE = "invalid_unicode"
REPLACEMENT = "\ufffd"
# Set on a message object (Meta's, or a bridge message event's data) whose strings were repaired; the
# parsers move it into ``content["warnings"]``.
WARNINGS_KEY = "_gateway_text_warnings"

_HEX = rb"[0-9a-fA-F]"
# A well-formed pair of escapes (an emoji as Meta and JSON.stringify write it), any surrogate escape,
# and the UTF-8 bytes of a surrogate (U+D800..U+DFFF: ED A0..BF xx; only "surrogatepass" reads them).
_PAIR = re.compile(rb"\\u[dD][89abAB]" + _HEX + _HEX + rb"\\u[dD][c-fC-F]" + _HEX + _HEX)
_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_UTF8 = re.compile(rb"\xed[\xa0-\xbf]")

Path = tuple[str | int, ...]


def may_have_lone_surrogates(raw: bytes) -> bool:
    """Whether the JSON text ``raw`` may decode to a string with a lone surrogate (False: it cannot).
    A surrogate escape left once the well-formed pairs are dropped, or a surrogate's UTF-8 bytes (a
    false hit, such as an escaped backslash before "u", costs a walk that finds nothing). Clean text
    costs a few substring searches: about 1-3 us for a 500-byte delivery (tests/test_text_repair.py)."""
    if not raw.isascii() and b"\xed" in raw and _UTF8.search(raw) is not None:
        return True
    if b"\\u" not in raw or (b"\\ud" not in raw and b"\\uD" not in raw):
        return False
    return _ESCAPE.search(_PAIR.sub(b"", raw)) is not None


def repaired(text: str) -> str | None:
    """``text`` with each lone surrogate replaced by U+FFFD (and split pairs joined); None when it is
    valid already."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return None


def _strings(data: Any) -> Iterator[tuple[Path, Any, str | int, str, bool]]:
    """Every string in ``data`` (objects, arrays): (its path, its container, its key there, the
    string, whether it is an object's key). Without recursion."""
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in list(value.items()):
                if isinstance(key, str):
                    yield (*path, key), value, key, key, True
                if isinstance(item, str):
                    yield (*path, key), value, key, item, False
                elif isinstance(item, (dict, list)):
                    stack.append(((*path, key), item))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    yield (*path, index), value, index, item, False
                elif isinstance(item, (dict, list)):
                    stack.append(((*path, index), item))


def repair_tree(data: Any) -> list[tuple[Path, str]]:
    """Repairs every string of ``data`` in place (values and keys); returns (path, the string as it
    was) for each repaired one."""
    found: list[tuple[Path, str]] = []
    keys: list[tuple[dict[str, Any], str, str]] = []  # renamed after the values (found by old keys)
    for path, container, key, text, is_key in list(_strings(data)):
        fixed = repaired(text)
        if fixed is None:
            continue
        found.append((path, text))
        if is_key:
            keys.append((container, text, fixed))
        else:
            container[key] = fixed
    for container, old, new in keys:
        container[new] = container.pop(old)
    return found


def find_lone_surrogate(data: Any) -> str | None:
    """The dotted path of the first string (value or key) in ``data`` no UTF-8 encoder accepts."""
    for path, _container, _key, text, _is_key in _strings(data):
        if repaired(text) is not None:
            return dotted(path)
    return None


def dotted(path: Path) -> str:
    """``a.0.b``; a key that is no Unicode itself shown repaired."""
    parts = (part if isinstance(part, int) else (repaired(part) or part) for part in path)
    return ".".join(map(str, parts)) or "(root)"


def warning(path: Path, original: str) -> dict[str, str]:
    """A message's warning for one repaired string (``path``: inside the message object)."""
    units = ", ".join(sorted({f"U+{ord(ch):04X}" for ch in original if 0xD800 <= ord(ch) <= 0xDFFF}))
    lone = (repaired(original) or "").count(REPLACEMENT) > original.count(REPLACEMENT)
    what = f"lone surrogate {units} replaced by U+FFFD" if lone else f"surrogate pair {units} joined"
    return {"code": CODE, "path": dotted(path), "message": f"not Unicode text: {what}"}


def _flag(message: Any, path: Path, original: str) -> None:
    if isinstance(message, dict):
        message.setdefault(WARNINGS_KEY, []).append(warning(path, original))


# Where Meta's message objects are in a delivery: entry[i].changes[j].value.<list>[k]
_MESSAGE_LISTS = frozenset({"messages", "message_echoes"})


def repair_delivery(data: Any) -> int:
    """A Meta webhook delivery repaired in place; each message object with a repaired string gets its
    warnings (``WARNINGS_KEY``). Returns how many strings were repaired."""
    found = repair_tree(data)
    for path, original in found:
        if (
            len(path) > 7
            and path[0] == "entry"
            and path[2] == "changes"
            and path[4] == "value"
            and path[5] in _MESSAGE_LISTS
        ):
            try:
                message = data["entry"][path[1]]["changes"][path[3]]["value"][path[5]][path[6]]
            except (KeyError, IndexError, TypeError):
                continue
            _flag(message, path[7:], original)
    return len(found)


def repair_bridge_line(line: bytes, obj: Any) -> int:
    """A bridge line (an event or a response; ``obj`` parsed from ``line``) repaired in place when
    ``line`` may need it; an event's ``data`` with a repaired string gets its warnings (a ``message``
    event's are moved into its content). Returns how many strings were repaired."""
    if not may_have_lone_surrogates(line):
        return 0
    found = repair_tree(obj)
    for path, original in found:
        if len(path) > 1 and path[0] == "data" and isinstance(obj, dict):
            _flag(obj.get("data"), path[1:], original)
    return len(found)
