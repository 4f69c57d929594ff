"""Masks: each predicate against a brute-force definition, tile plans against dense evaluation."""

import itertools
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from attnlab.core import masks as M
from attnlab.core.masks import EMPTY, FULL, PARTIAL, Order
from attnlab.core.tiles import plan_mask
from tests.core.strategies import grid_masks, grid_shapes, seq_masks


def _coords(i, shape):
    return [(i // math.prod(shape[a + 1 :])) % shape[a] for a in range(len(shape))]


def _na_window_1d(i, n, k, d, causal):
    """Keys of query i on one axis, by NATTEN's rule, written out with plain integers."""
    group = [j for j in range(n) if j % d == i % d]  # the dilation group, in order
    pos = group.index(i)
    if causal:
        return set(group[max(0, pos - k + 1) : pos + 1])
    start = pos - k // 2
    start = max(0, min(start, len(group) - k))
    return set(group[start : start + k])


def _brute(shape, rule):
    n = math.prod(shape)
    out = torch.zeros(n, n, dtype=torch.bool)
    for i, j in itertools.product(range(n), range(n)):
        ci, cj = _coords(i, shape), _coords(j, shape)
        out[i, j] = all(rule(a, ci[a], cj[a]) for a in range(len(shape)))
    return out


@st.composite
def na_params(draw):
    shape = draw(grid_shapes(max_tokens=150))
    dil = tuple(draw(st.integers(1, max(1, n // 2))) for n in shape)
    ker = tuple(draw(st.integers(1, max(1, n // d))) for n, d in zip(shape, dil))
    caus = tuple(draw(st.booleans()) for _ in shape)
    return shape, ker, dil, caus


@given(na_params())
def test_neighborhood_equals_brute_force_natten_rule(p):
    shape, ker, dil, caus = p
    m = M.neighborhood(ker, dilation=dil, is_causal=caus, shape=shape)
    want = _brute(shape, lambda a, i, j: j in _na_window_1d(i, shape[a], ker[a], dil[a], caus[a]))
    assert torch.equal(m.dense(len(want), len(want))[0, 0], want)


@given(na_params())
def test_neighborhood_every_row_sees_kernel_size_keys(p):
    shape, ker, dil, _ = p
    m = M.neighborhood(ker, dilation=dil, shape=shape)
    n = math.prod(shape)
    assert (m.dense(n, n).sum(-1) == math.prod(ker)).all()


@given(grid_shapes(max_tokens=200))
def test_neighborhood_with_kernel_equal_to_axis_is_full_attention(shape):
    n = math.prod(shape)
    assert M.neighborhood(shape, shape=shape).dense(n, n).all()


def test_neighborhood_dilation_groups():
    m = M.neighborhood(3, dilation=2, shape=(8,)).dense(8, 8)[0, 0]
    assert m[0].nonzero().flatten().tolist() == [0, 2, 4]
    assert m[7].nonzero().flatten().tolist() == [3, 5, 7]


@given(grid_shapes(max_tokens=150), st.data())
def test_halo_equals_brute_force(shape, data):
    block = tuple(data.draw(st.sampled_from([b for b in range(1, n + 1) if n % b == 0])) for n in shape)
    halo = tuple(data.draw(st.integers(0, 3)) for _ in shape)
    m = M.blocks_with_halo(block, halo, shape=shape)
    want = _brute(shape, lambda a, i, j: (i // block[a]) * block[a] - halo[a] <= j < (i // block[a] + 1) * block[a] + halo[a])
    assert torch.equal(m.dense(len(want), len(want))[0, 0], want)


@given(grid_shapes(max_tokens=150), st.data())
def test_strided_groups_equals_brute_force(shape, data):
    interval = tuple(data.draw(st.integers(1, n)) for n in shape)
    m = M.strided_groups(interval, shape=shape)
    want = _brute(shape, lambda a, i, j: i % interval[a] == j % interval[a])
    assert torch.equal(m.dense(len(want), len(want))[0, 0], want)


def test_sequence_masks_by_definition():
    n = 9
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(M.causal.dense(n, n)[0, 0], j <= i)
    assert torch.equal(M.sliding_window(2, 1).dense(n, n)[0, 0], (j >= i - 2) & (j <= i + 1))
    assert torch.equal(M.prefix_lm(3).dense(n, n)[0, 0], (j < 3) | (j <= i))
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert torch.equal(M.segments(ids).dense(n, n)[0, 0], ids[:, None] == ids[None, :])


def test_modality_mutual_image_sees_question_and_answers_never_leak():
    types = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # image, question, answer
    m = M.modality_mutual(types == 0, types == 1).dense(7, 7)[0, 0]
    assert m[:3, 3:5].all()  # image rows see the later question
    assert not m[:5, 5:].any()  # nobody before the answer sees it
    assert torch.equal(m[5:], M.causal.dense(7, 7)[0, 0, 5:])  # answer rows are causal


def test_isolation_has_no_cross_subject_attention():
    g = torch.tensor([0, 1, 1, 2, 2, 0, 3])
    m = M.isolation(g).dense(7, 7)[0, 0]
    subj = (g[:, None] > 0) & (g[None, :] > 0) & (g[:, None] != g[None, :])
    assert not m[subj].any()
    assert m[~subj].all()


@given(st.integers(1, 40), st.data())
def test_combinators_are_elementwise_logic(n, data):
    a = data.draw(seq_masks(n, n, 1).filter(lambda m: isinstance(m, M.Mask)))
    b = data.draw(seq_masks(n, n, 1).filter(lambda m: isinstance(m, M.Mask)))
    da, db = a.dense(n, n), b.dense(n, n)
    assert torch.equal((a & b).dense(n, n), da & db)
    assert torch.equal((a | b).dense(n, n), da | db)
    assert torch.equal((~a).dense(n, n), ~da)


def test_masks_print_as_what_they_are():
    assert repr(M.sliding_window(256) & M.causal) == "(sliding_window(256, 0) & causal)"
    assert repr(~M.prefix_lm(4)) == "~prefix_lm(4)"


# --- tiles ------------------------------------------------------------------------------------


def _dense_states(mask, order, batch, heads):
    """Tile states by evaluating every slot of every tile."""
    qi, ki = order.q_index, order.k_index
    lq, lk = int(qi.max()) + 1, int(ki.max()) + 1
    d = mask.dense(lq, lk, batch=batch, heads=heads)  # [B', H', lq, lk]
    full = d[:, :, qi.clamp(min=0)][:, :, :, ki.clamp(min=0)] & (qi >= 0)[:, None] & (ki >= 0)[None, :]
    t = full.reshape(d.shape[0], d.shape[1], -1, order.q_tile, ki.numel() // order.k_tile, order.k_tile)
    any_, all_ = t.any(5).any(3).flatten(0, 1).any(0), t.all(5).all(3).flatten(0, 1).all(0)
    return torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY))


@st.composite
def masks_with_lengths(draw):
    if draw(st.booleans()):
        shape = draw(grid_shapes(max_tokens=200))
        n = math.prod(shape)
        m = draw(grid_masks(shape))
        if draw(st.booleans()):
            m = m & draw(seq_masks(n, n, 2).filter(lambda x: isinstance(x, M.Mask)))
        return m, n, n
    lq, lk = draw(st.integers(1, 200)), draw(st.integers(1, 200))
    m = draw(seq_masks(lq, lk, 2).filter(lambda x: isinstance(x, M.Mask)))
    op = draw(st.sampled_from(["", "and", "or", "not"]))
    if op == "not":
        m = ~m
    elif op:
        o = draw(seq_masks(lq, lk, 2).filter(lambda x: isinstance(x, M.Mask)))
        m = m & o if op == "and" else m | o
    return m, lq, lk


@given(masks_with_lengths(), st.integers(1, 40), st.integers(1, 40))
def test_tile_bounds_are_never_wrong(mlk, tq, tk):
    mask, lq, lk = mlk
    order = mask.token_order(lq, lk, tq) or Order.natural(lq, lk, tq, tk)
    bounds = mask.tile_bounds(order)
    assume(bounds is not None)
    exact = _dense_states(mask, order, 2, 1)
    assert ((bounds == exact) | (bounds == PARTIAL)).all(), "a bound claimed EMPTY or FULL wrongly"


@given(masks_with_lengths(), st.integers(1, 40), st.integers(1, 40))
def test_tile_plan_is_exact(mlk, tq, tk):
    mask, lq, lk = mlk
    plan = plan_mask(mask, lq, lk, q_tile=tq, k_tile=tk, batch=2, heads=1, device="cpu")
    exact = _dense_states(mask, plan.order, 2, 1)
    d = mask.dense(lq, lk, batch=2)
    qi, ki = plan.order.q_index, plan.order.k_index
    for i, row in enumerate(plan.rows):
        assert row.k_tiles.tolist() == torch.nonzero(exact[i] != EMPTY).flatten().tolist()
        partial = row.k_tiles[row.partial]
        assert partial.tolist() == torch.nonzero(exact[i] == PARTIAL).flatten().tolist()
        for m, j in zip(row.masks if row.masks is not None else [], partial.tolist()):
            q = qi[i * plan.q_tile : (i + 1) * plan.q_tile]
            k = ki[j * plan.k_tile : (j + 1) * plan.k_tile]
            want = d[:, :, q.clamp(min=0)][:, :, :, k.clamp(min=0)] & (q >= 0)[:, None] & (k >= 0)[None, :]
            assert torch.equal(m.expand_as(want), want)


@given(grid_shapes(max_tokens=300), st.integers(1, 128))
def test_grid_token_order_is_a_padded_permutation(shape, tile):
    m = M.neighborhood(1, shape=shape)
    n = math.prod(shape)
    o = m.token_order(n, n, tile)
    real = o.q_index[o.q_index >= 0]
    assert sorted(real.tolist()) == list(range(n))
    assert o.q_index.numel() % o.q_tile == 0


def test_neighborhood_tiles_are_compact_boxes():
    m = M.neighborhood(7, shape=(64, 64))
    plan = plan_mask(m, 4096, 4096, q_tile=128, k_tile=128, grid_tile=64, batch=1, heads=1, device="cpu")
    # 8x8 boxes: a 7x7 window around a box touches at most its 3x3 neighbouring boxes.
    assert max(r.k_tiles.numel() for r in plan.rows) == 9
    assert plan.density() < 9 / 64


@pytest.mark.parametrize(
    "mask",
    [M.causal, M.sliding_window(20, 5), M.prefix_lm(30), M.neighborhood(5, shape=(100,)), M.segments(torch.arange(100) // 30)],
    ids=repr,
)
def test_block_mask_agrees_with_tile_plan(mask):
    bm = mask.to_block_mask(100, 100, block_size=16)
    plan = plan_mask(mask, 100, 100, q_tile=16, k_tile=16, batch=1, heads=1, device="cpu")
    nonempty = torch.zeros(len(plan.rows), plan.n_k_tiles, dtype=torch.bool)
    for i, r in enumerate(plan.rows):
        nonempty[i, r.k_tiles] = True
    assert torch.equal(bm.to_dense()[0, 0].bool(), nonempty)


@pytest.mark.parametrize(
    ("make", "err", "text"),
    [
        (lambda: M.neighborhood(9, shape=(8,)), ValueError, "kernel_size * dilation must not exceed"),
        (lambda: M.neighborhood(3, dilation=1.5, shape=(8,)), TypeError, "dilation must be an integer"),
        (lambda: M.neighborhood(3, dilation=3, shape=(8,)), ValueError, "kernel_size=3, dilation=3"),
        (lambda: M.neighborhood((3, 3), shape=(8,)), ValueError, "kernel_size has 2 entries but the grid has 1 axes"),
        (lambda: M.neighborhood(3, shape=(0, 4)), ValueError, "shape must be 1 to 3 positive integers"),
        (lambda: M.blocks_with_halo(3, 1, shape=(8,)), ValueError, "block must be >= 1 and divide the axis"),
        (lambda: M.strided_groups(9, shape=(8,)), ValueError, "interval must be between 1 and the axis length"),
        (lambda: M.sliding_window(-1), ValueError, "left must be >= 0"),
        (lambda: M.segments(torch.rand(5)), ValueError, "ids must be an integer tensor"),
        (lambda: M.causal & torch.ones(3, 3), TypeError, "both sides must be Masks"),
        (lambda: M.neighborhood(3, shape=(4, 4)).dense(15, 15), ValueError, "covers a grid of 16 tokens"),
        (lambda: M.segments(torch.zeros(5, dtype=torch.long)).dense(6, 6), ValueError, "built for 5 queries and 5 keys"),
    ],
)
def test_bad_mask_arguments_say_what_to_fix(make, err, text):
    with pytest.raises(err, match=text.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        make()
