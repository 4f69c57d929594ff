"""FinalMLP (paper 75): gated two-stream MLP with multi-head bilinear fusion."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.finalmlp import FinalMLP


def _zero_gate(m):
    with torch.no_grad():
        for g in (m.gate1, m.gate2):
            g[-1].weight.zero_()
            g[-1].bias.zero_()


def test_gate_at_one_passes_the_plain_input_to_each_stream():
    torch.manual_seed(0)
    m = FinalMLP(6, (8, 4), heads=2, gate_hidden=5)
    _zero_gate(m)
    x = torch.randn(3, 6)
    g1, g2 = m.gates(3)
    torch.testing.assert_close(g1, torch.ones(3, 6))
    torch.testing.assert_close(m(x), m.fuse(m.stream1(x), m.stream2(x)))


def test_gates_in_open_interval_zero_two():
    torch.manual_seed(1)
    m = FinalMLP(10, (8,), context_dim=4)
    with torch.no_grad():
        m.gate1[-1].weight.mul_(3)
    g1, g2 = m.gates(64, 5 * torch.randn(64, 4), torch.randn(64, 4))
    assert (g1 > 0).all() and (g1 < 2).all() and (g2 > 0).all() and (g2 < 2).all()


def test_fusion_equals_handwritten_sum_over_heads():
    torch.manual_seed(2)
    m = FinalMLP(4, (6,), hidden2=(9,), heads=3)
    o1, o2 = torch.randn(2, 6), torch.randn(2, 9)
    want = torch.zeros(2)
    for b in range(2):
        for h in range(3):
            a, c = o1[b, 2 * h : 2 * h + 2], o2[b, 3 * h : 3 * h + 3]
            want[b] += m.w1.bias[0] + m.w1.weight[0] @ a + m.w2.weight[0] @ c + a @ m.w3[h] @ c
    torch.testing.assert_close(m.fuse(o1, o2), want)


def test_given_context_drives_the_gate():
    torch.manual_seed(3)
    m = FinalMLP(5, (4,), context_dim=3)
    x = torch.randn(1, 5).expand(2, 5)
    c = torch.randn(2, 3)
    out = m(x, c, c)
    assert out.shape == (2,) and out[0] != out[1]


def test_gradcheck():
    torch.manual_seed(4)
    m = FinalMLP(4, (6, 4), heads=2, gate_hidden=3).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_registered():
    assert operators.get("finalmlp") is FinalMLP and FinalMLP.paper == "75"


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 0}, "dim must be a positive"),
        ({"dim": 4, "hidden": ()}, "non-empty tuple"),
        ({"dim": 4, "hidden": (6,), "heads": 4}, "divisible by heads"),
        ({"dim": 4, "context_dim": 0}, "context_dim must be"),
    ],
)
def test_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        FinalMLP(**kw)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"x must be \[B, C\]"):
        FinalMLP(4, (4,))(torch.randn(2, 5))
    with pytest.raises(ValueError, match="learns its context"):
        FinalMLP(4, (4,))(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"ctx1 must be \[B, 3\]"):
        FinalMLP(4, (4,), context_dim=3)(torch.randn(2, 4))
