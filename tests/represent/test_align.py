"""Token-group and consecutive-layer cosine (paper 35) against captures computed by hand."""

import pytest
import torch

import attnlab
from attnlab.represent import align_layers, check_spans, cosine
from tests.represent._models import llama

SEQS = [[5, 9, 2, 7, 7, 3], [4, 4, 8, 1], [9, 8, 7, 6, 5, 4, 3]]
SPANS_A = [(0, 3), (0, 2), (1, 3)]
SPANS_B = [(3, 6), (2, 4), (4, 7)]


def test_consecutive_cosine_across_a_zeroed_layer_is_exactly_one():
    model = llama()
    zero = {p: (lambda x, point: torch.zeros_like(x)) for p in ("layers.1.attn.out", "layers.1.mlp.out")}
    with attnlab.intervene(model, zero):
        rows = align_layers(model, SEQS, SPANS_A, SPANS_B, batch_size=2)
    assert rows[1]["consecutive"] == 1.0  # stream 1 (layer 0's output) against stream 2 (layer 1's, which added nothing)
    assert rows[0]["consecutive"] < 1.0
    assert rows[-1]["consecutive"] is None


def test_group_and_consecutive_cosine_match_a_hand_computation():
    model = llama()
    rows = align_layers(model, SEQS, SPANS_A, SPANS_B, batch_size=2)
    points = attnlab.represent.layer_points(model)
    group, cons, tokens = [0.0] * len(points), [0.0] * (len(points) - 1), 0
    for ids, (a0, a1), (b0, b1) in zip(SEQS, SPANS_A, SPANS_B, strict=True):
        with attnlab.capture(model, points) as cache:
            model(input_ids=torch.tensor([ids]))
        xs = [cache[p][0].double() for p in points]
        for l, x in enumerate(xs):
            group[l] += torch.nn.functional.cosine_similarity(x[a0:a1].mean(0), x[b0:b1].mean(0), dim=0).item() / len(SEQS)
            if l + 1 < len(xs):
                cons[l] += torch.nn.functional.cosine_similarity(x, xs[l + 1], dim=-1).sum().item()
        tokens += len(ids)
    assert [r["group_cosine"] for r in rows] == pytest.approx(group, abs=1e-5)
    assert [r["consecutive"] for r in rows[:-1]] == pytest.approx([c / tokens for c in cons], abs=1e-5)


def test_mismatched_group_spans_are_refused():
    with pytest.raises(ValueError, match="one span per example"):
        check_spans(SEQS, SPANS_A[:2], SPANS_B)
    with pytest.raises(ValueError, match=r"example 1: group b span \[2, 9\) is empty or outside its 4 tokens"):
        check_spans(SEQS, SPANS_A, [(3, 6), (2, 9), (4, 7)])
    with pytest.raises(ValueError, match="group a span"):
        check_spans(SEQS, [(0, 3), (2, 2), (1, 3)], SPANS_B)


def test_cosine_of_equal_rows_is_exactly_one():
    x = torch.randn(50, 33) * 1e3
    assert torch.equal(cosine(x, x), torch.ones(50, dtype=torch.float64))
