"""Unit matching between two networks (paper 66): a permuted copy is matched exactly, and planted maps are recovered."""

import pytest
import torch

from attnlab.represent import CrossStats, builtin, match_units, permutation_null, run_represent, sparse_prediction, spectral_groups, states
from tests.represent._models import CharTokenizer, llama, residual_permuted


def _rows(model, seqs):
    """Every stream's token rows, all batches: (tokens, C) per stream."""
    out = None
    for streams, mask, _ in states(model, seqs, batch_size=4):
        rows = [x[mask] for x in streams]
        out = rows if out is None else [torch.cat([a, b]) for a, b in zip(out, rows, strict=True)]
    return out


@pytest.mark.slow
def test_a_permuted_copy_of_a_tiny_model_is_matched_exactly():
    model = llama()
    perm = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    copy = residual_permuted(model, perm)
    seqs = [CharTokenizer()(t)["input_ids"] for t in builtin("lexical", 10).texts()]
    a, b = _rows(model, seqs), _rows(copy, seqs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x[:, perm], rtol=1e-4, atol=1e-5)  # the copy is the same network
        s = CrossStats([(0, 1)])
        s.update([x, y])
        m = match_units(s.correlation(0, 1))
        assert torch.equal(perm[torch.tensor(m.pairs)], torch.arange(len(perm)))  # unit i of x is unit j of y where perm[j] = i
        assert m.mean == pytest.approx(1.0, abs=1e-6)
    result = run_represent([model, copy], [CharTokenizer()] * 2, builtin("lexical", 10), "match", settings={}, groups=4)
    assert [r["matched"] for r in result.table] == pytest.approx([1.0] * 3, abs=1e-6)
    assert [r["shared_groups"] for r in result.table] == [1.0] * 3


def test_the_permutation_null_of_a_network_with_itself_is_far_below_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g, dtype=torch.float64)
    null = permutation_null(x, x, draws=5)
    assert max(null) < 0.3  # rows shuffled: what matching finds by chance, against 1.0 unshuffled


def test_matching_reads_the_correlation_not_its_order():
    corr = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.85, 0.1], [0.0, 0.2, 0.7]])
    m = match_units(corr)  # greedy would give unit 1 to unit 1 (0.85) and leave 0.1 for unit 0
    assert m.pairs == [1, 0, 2]
    assert m.scores == pytest.approx([0.9, 0.8, 0.7])
    with pytest.raises(ValueError, match=r"pass corr\.T"):
        match_units(corr[:, :2])


def test_sparse_prediction_finds_a_planted_sparse_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=g, dtype=torch.float64)
    y = torch.stack([2 * x[:, 4], x[:, 0] - x[:, 9], torch.randn(500, generator=g, dtype=torch.float64)], 1)
    out = sparse_prediction(x, y, alpha=0.05)
    assert out["r2"][0] > 0.95 and out["r2"][1] > 0.95 and out["r2"][2] < 0.1
    assert out["units_used"][0] <= 2 and out["units_used"][1] <= 3


def test_spectral_groups_join_each_unit_with_its_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = x[:, [2, 0, 1, 5, 3, 4]] + 0.05 * torch.randn(300, 6, generator=g, dtype=torch.float64)
    s = CrossStats([(0, 1)])
    s.update([x, y])
    out = spectral_groups(s.correlation(0, 0), s.correlation(0, 1), s.correlation(1, 1), 6)
    assert out["shared"] == 1.0
    assert [out["labels_y"][j] for j in [1, 2, 0, 4, 5, 3]] == out["labels_x"]
