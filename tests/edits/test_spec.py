"""Edit specs (name:key=value,...), the registry and its error messages."""

import pytest

from attnlab import edits
from attnlab.edits._base import _value, parse_heads


def test_values_are_typed():
    assert _value("3") == 3 and _value("0.4") == 0.4 and _value("true") is True and _value("zero") == "zero"
    assert _value("3+4+7") == [3, 4, 7] and _value("10-12") == [10, 11, 12] and _value("L18H6+L17H3") == ["L18H6", "L17H3"]


def test_heads_are_written_layer_and_head():
    assert parse_heads(["L18H6", "L17H10", (3, 2)]) == [(18, 6), (17, 10), (3, 2)]
    with pytest.raises(ValueError, match=r"cannot read the head '18.6'"):
        parse_heads("18.6")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("drop_attention:top", "'top' is not key=value"),
        ("Drop Attention", "malformed edit spec"),
        ("head_mask:=3", "needs a key and a value"),
        ("no_such_edit", "unknown edit 'no_such_edit'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        edits.parse(spec)
