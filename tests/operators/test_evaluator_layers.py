"""Layered evaluator aggregation (paper 48): later layers judge again while reading the layer below."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.evaluator_layers import layered_aggregation

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_each_layer_reads_the_one_below():
    seen = []

    def judge(layer, i, prev):
        seen.append((layer, i, None if prev is None else prev.tolist()))
        return torch.tensor([10.0 * layer + i, -1.0]) if prev is None else prev.sum(0) + i

    out = layered_aggregation(judge, width=2, depth=3)
    assert out[0].tolist() == [[0.0, -1.0], [1.0, -1.0]]
    assert out[1].tolist() == [[1.0, -2.0], [2.0, -1.0]]  # column sums of layer 0, plus i
    assert out[2].tolist() == [[3.0, -3.0], [4.0, -2.0]]
    assert [s[:2] for s in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] and seen[0][2] is None


def test_depth_one_is_the_plain_ensemble():
    scores = torch.randn(4, 7)
    out = layered_aggregation(lambda layer, i, prev: scores[i], width=4, depth=1)
    torch.testing.assert_close(out[-1].mean(0), scores.mean(0))


def _simulated(margin, noise, g):
    """A noisy evaluator: reads the true margin with fresh N(0, noise²) error; above layer 0 it
    averages its own reading with the layer below's mean judgement."""

    def judge(layer, i, prev):
        own = margin + noise * torch.randn(margin.shape, generator=g)
        return own if prev is None else 0.5 * own + 0.5 * prev.mean(0)

    return judge


def test_two_layers_beat_one_with_simulated_noisy_evaluators():
    """PAPERS.md check: with simulated noisy evaluators, the 2-layer network's verdicts agree with the truth more often than 1 layer's."""
    g = torch.Generator().manual_seed(0)
    margin = torch.randn(20000, generator=g)  # true preference of answer A over B, per item
    acc = {}
    for depth in (1, 2):
        verdict = layered_aggregation(_simulated(margin, 2.0, g), width=3, depth=depth)[-1].mean(0)
        acc[depth] = float(((verdict > 0) == (margin > 0)).float().mean())
    assert acc[2] > acc[1] + 0.02, f"agreement with the truth by depth: {acc}"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="depth must be a positive integer, got depth=0"):
        layered_aggregation(lambda layer, i, prev: torch.zeros(2), depth=0)
    with pytest.raises(ValueError, match=r"judge must return a 1-D tensor \[N\].*\[\(2,\), \(3,\)\] in layer 0"):
        layered_aggregation(lambda layer, i, prev: torch.zeros(2 + i), width=2)
    with pytest.raises(ValueError, match="got \\['float', 'float'\\]"):
        layered_aggregation(lambda layer, i, prev: 1.0, width=2)


def test_registered():
    assert operators.get("layered_aggregation") is layered_aggregation and layered_aggregation.paper == "48"
