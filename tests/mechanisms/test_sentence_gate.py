"""Sentence attention block (paper 61): out = X ⊙ σ(W₂ ReLU(W₁ e_text))."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.sentence_gate import SentenceGate


def test_sentence_gate_constant_text_is_a_fixed_channel_scaling():
    torch.manual_seed(0)
    m = SentenceGate(8, text_dim=5, reduction=2)
    e = torch.randn(5)
    x = torch.randn(3, 4, 4, 8)
    out = m(x, e.expand(3, 5))
    W1, b1, W2, b2 = m.excite[0].weight, m.excite[0].bias, m.excite[2].weight, m.excite[2].bias
    scale = torch.sigmoid(W2 @ torch.relu(W1 @ e + b1) + b2)  # [C], one scaling for every image and pixel
    torch.testing.assert_close(out, x * scale, atol=1e-6, rtol=1e-6)


def test_sentence_gate_depends_on_text_only():
    torch.manual_seed(1)
    m = SentenceGate(8, text_dim=5, reduction=2)
    t1, t2 = torch.randn(1, 5), torch.randn(1, 5)
    x = torch.randn(1, 2, 2, 8)
    assert not torch.allclose(m(x, t1), m(x, t2))
    torch.testing.assert_close(m(2 * x, t1), 2 * m(x, t1))


def test_sentence_gate_in_open_unit_interval():
    torch.manual_seed(2)
    g = SentenceGate(16, text_dim=7).gate(3 * torch.randn(64, 7))
    assert g.shape == (64, 16) and (g > 0).all() and (g < 1).all()


def test_sentence_gate_gradcheck():
    torch.manual_seed(3)
    m = SentenceGate(6, text_dim=4, reduction=2).double()
    x = torch.randn(2, 2, 3, 6, dtype=torch.float64, requires_grad=True)
    text = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x, text))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sentence_gate_shape_and_dtype(dtype):
    m = SentenceGate(16, text_dim=8).to(dtype)
    y = m(torch.randn(2, 3, 4, 16, dtype=dtype), torch.randn(2, 8, dtype=dtype))
    assert y.shape == (2, 3, 4, 16) and y.dtype == dtype and not y.isnan().any()


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 0}, "positive integers"),
        ({"dim": 8, "text_dim": 0}, "text_dim must be a positive integer"),
        ({"dim": 8, "reduction": 0}, "reduction must be a positive integer"),
    ],
)
def test_sentence_gate_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        SentenceGate(**kw)


def test_sentence_gate_bad_inputs_raise():
    m = SentenceGate(8, text_dim=4)
    with pytest.raises(ValueError, match=r"text must be \[B, E\] with E=4, got shape \(2, 5\)"):
        m(torch.randn(2, 3, 3, 8), torch.randn(2, 5))
    with pytest.raises(ValueError, match="must share the batch"):
        m(torch.randn(2, 3, 3, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"with C=8, got shape \(2, 8, 3, 3\)"):
        m(torch.randn(2, 8, 3, 3), torch.randn(2, 4))


def test_sentence_gate_registered():
    assert isinstance(mechanisms.get("sentence_gate", dim=8, heads=1, text_dim=4), SentenceGate)
