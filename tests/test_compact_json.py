import datetime as dt
import json

import pytest

from control_plane.compact_json import dict_encoder


def _default(value):
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"text": 'héllo "quoted" \\ back\nslash \u2028 😀', "n": 1, "f": 2.5, "none": None, "t": True},
        {"nested": {"list": [1, "two", {"three": [None, False]}], "empty": []}, "day": dt.date(2026, 1, 31)},
    ],
)
def test_the_prebuilt_encoder_writes_what_json_dumps_writes(obj):
    expected = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_default)
    assert dict_encoder(_default)(obj) == expected


def test_an_unserializable_value_raises_the_defaults_error():
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        dict_encoder(_default)({"x": object()})
