"""attnlab.heads.parse_heads: every way a head is written, bounds, and the errors that name the fix."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.heads import parse_heads


def test_heads_are_read_from_text_lists_and_pairs():
    assert parse_heads("L18H6,L17H3") == [(18, 6), (17, 3)]
    assert parse_heads(" l1h2 , L1H2 ") == [(1, 2)]  # once each, any case
    assert parse_heads(["L18H6", "L17H10", (3, 2)]) == [(18, 6), (17, 10), (3, 2)]
    assert parse_heads((3, 2)) == [(3, 2)]  # a bare pair is one head
    assert parse_heads(["L0H1,L2H3"]) == [(0, 1), (2, 3)]
    assert parse_heads(None) == [] and parse_heads("") == []


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=8))
def test_written_heads_read_back_in_order_once_each(heads):
    text = ",".join(f"L{layer}H{h}" for layer, h in heads)
    assert parse_heads(text) == list(dict.fromkeys(heads))
    assert parse_heads([f"l{layer}h{h}" for layer, h in heads]) == list(dict.fromkeys(heads))


@pytest.mark.parametrize("bad", ["18:6", "18.6", "L18", "H6", "L-1H2", "layer 3", "L1H2x"])
def test_unreadable_heads_name_the_form(bad):
    with pytest.raises(ValueError, match=r"cannot read the head .*: write a head as L<layer>H<head>"):
        parse_heads(bad)


def test_bounds_name_the_valid_range():
    assert parse_heads("L29H8", layers=30, n_heads=9) == [(29, 8)]
    with pytest.raises(ValueError, match=r"the head L30H0 does not exist: the model has layers 0..29 and heads 0..8 per layer"):
        parse_heads("L30H0", layers=30, n_heads=9)
    with pytest.raises(ValueError, match=r"the head L3H9 does not exist: the model has layers 0..29 and heads 0..8 per layer"):
        parse_heads([(3, 9)], layers=30, n_heads=9)
    with pytest.raises(ValueError, match=r"the head L3H9 does not exist: the model has heads 0..8 per layer$"):
        parse_heads("L3H9", n_heads=9)
    assert parse_heads("L99H0", n_heads=9) == [(99, 0)]  # only the bounds given are checked
