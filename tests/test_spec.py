"""The one key=value syntax: typed values, round trips, and ValueError for every malformed input."""

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.spec import MAX_RANGE, format_options, format_spec, format_value, parse_options, parse_spec, parse_value

names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
words = st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,8}", fullmatch=True).filter(lambda s: isinstance(parse_value(s), str))
scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    words,
)
lists = st.lists(st.one_of(st.integers(0, 10**6), words), min_size=2, max_size=5)
options = st.dictionaries(names.filter(str.isidentifier), st.one_of(scalars, lists), max_size=5)


def test_values_are_typed():
    assert parse_value("3") == 3 and parse_value("-2") == -2 and parse_value("0.4") == 0.4 and parse_value("3e-4") == 3e-4
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None and parse_value("null") is None
    assert parse_value("zero") == "zero" and parse_value("1e+5") == 1e5  # a number with '+' is a number
    assert parse_value("3+4+7") == [3, 4, 7] and parse_value("10-12") == [10, 11, 12]
    assert parse_value("10-12+20") == [10, 11, 12, 20] and parse_value("L18H6+L17H3") == ["L18H6", "L17H3"]


def test_spec_and_options_read_names_and_options():
    assert parse_spec("drop_attention") == ("drop_attention", {})
    assert parse_spec(" head_mask:layers=1-3+7, mode=zero,") == ("head_mask", {"layers": [1, 2, 3, 7], "mode": "zero"})
    assert parse_options("") == {} and parse_options("pairs=8,lr=0.001") == {"pairs": 8, "lr": 0.001}
    assert parse_options("path=a:b") == {"path": "a:b"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("top", "malformed --task-option 'top': 'top' is not key=value: --task-option takes key=value,key=value (e.g. pairs=8)"),
        ("=3", "'=3' needs a key and a value"),
        ("top=", "'top=' needs a key and a value"),
        ("1x=3", "the key '1x' is not a name"),
        ("a=b=c", "the value 'b=c' holds '='"),
        ("a=1,a=2", "'a' is given twice"),
        ("a=3++4", "empty list item"),
        ("a=7-3", "'7-3' is not a range: write a-b with a <= b"),
        (f"a=0-{MAX_RANGE}", "at most 100000 items"),
    ],
)
def test_malformed_options_say_what_is_wrong_and_what_is_right(text, message):
    with pytest.raises(ValueError, match="malformed --task-option") as e:
        parse_options(text, what="--task-option", example="pairs=8")
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Drop Attention", "'Drop Attention' is not a name (lower-case letters, digits, _)"),
        (":top=4", "'' is not a name"),
        ("drop_attention:top", "'top' is not key=value: edit spec takes name or name:key=value,key=value (e.g. drop_attention:top=4)"),
    ],
)
def test_malformed_specs_say_what_is_wrong_and_what_is_right(text, message):
    with pytest.raises(ValueError, match="malformed edit spec") as e:
        parse_spec(text, what="edit spec")
    assert message in str(e.value)


@given(names, options)
def test_spec_round_trips(name, opts):
    assert parse_spec(format_spec(name, opts)) == (name, opts)


@given(options)
def test_options_round_trip(opts):
    text = format_options(opts)
    assert parse_options(text) == opts
    assert format_options(parse_options(text)) == text


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_value_error(text):
    for parse in (parse_spec, parse_options, parse_value):
        with contextlib.suppress(ValueError):
            parse(text)


@given(st.text(alphabet=st.sampled_from("ab_1-+=:,. \t9e"), max_size=30))
def test_near_valid_text_parses_or_raises_value_error(text):
    for parse in (parse_spec, parse_options, parse_value):
        with contextlib.suppress(ValueError):
            parse(text)


@pytest.mark.parametrize("value", [[], [1], [[1, 2], 3], ["a+b", "c"], "a,b", " a", "", "12", "true", math.inf, object()])
def test_values_that_would_not_read_back_cannot_be_written(value):
    with pytest.raises(ValueError):
        format_value(value)
