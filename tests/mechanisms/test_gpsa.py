"""ConViT gated positional self-attention (paper 19), checked against an explicit mixed softmax."""

import math

import pytest
import torch
from torch.func import functional_call

from attnlab import mechanisms
from attnlab.mechanisms.gpsa import GPSA


def _positional_logits(w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """w_h · (δx, δy, δx² + δy²), query by query and key by key."""
    T = height * width
    out = torch.zeros(w.shape[0], T, T, dtype=w.dtype)
    for i in range(T):
        for j in range(T):
            dy, dx = j // width - i // width, j % width - i % width
            out[:, i, j] = w @ torch.tensor([dx, dy, dx * dx + dy * dy], dtype=w.dtype)
    return out


def _reference(m: GPSA, x: torch.Tensor) -> torch.Tensor:
    """(1 − σ(λ))·softmax(q kᵀ/√d) + σ(λ)·softmax(positional), applied to v, then the output projection."""
    B, Hg, Wg, C = x.shape
    H, D, T = m.heads, C // m.heads, Hg * Wg
    t = x.reshape(B, T, C)
    q, k = m.qk(t).reshape(B, T, 2, H, D).permute(2, 0, 3, 1, 4)
    v = m.v(t).reshape(B, T, H, D).transpose(1, 2)
    content = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
    positional = torch.softmax(_positional_logits(m.pos_weight, Hg, Wg), dim=-1)
    g = torch.sigmoid(m.gate)[:, None, None]
    attn = (1 - g) * content + g * positional
    attn = attn / attn.sum(-1, keepdim=True)  # ConViT's renormalisation
    return m.proj((attn @ v).transpose(1, 2).reshape(B, Hg, Wg, C))


def test_gpsa_local_init_each_head_peaks_at_its_own_offset():
    m = GPSA(18, 9)
    with torch.no_grad():
        m.gate.fill_(float("inf"))  # gate 1: positional attention only
    probs = m.probs(torch.randn(1, 6, 7, 18))[0]  # [H, T, T]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for h, (dy, dx) in enumerate(offsets):
        for y in range(1, 5):
            for x in range(1, 6):
                assert probs[h, y * 7 + x].argmax().item() == (y + dy) * 7 + (x + dx)
    assert torch.equal(m.v.weight, torch.eye(18))


def test_gpsa_locality_strength_sharpens_the_peak():
    weak, strong = GPSA(8, 4, locality_strength=0.5), GPSA(8, 4, locality_strength=3.0)
    peak = [torch.softmax(m.positional_logits(5, 5), -1).amax(-1).mean() for m in (weak, strong)]
    assert peak[1] > peak[0]


@pytest.mark.parametrize("grad", [True, False])  # the positional attention's zeros differ in width
def test_gpsa_matches_explicit_mixed_attention(grad):
    torch.manual_seed(0)
    m = GPSA(16, 4)
    with torch.no_grad():
        m.gate.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        m.v.weight.normal_()
    x = torch.randn(2, 3, 4, 16)
    with torch.set_grad_enabled(grad):
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


def test_gpsa_gate_zero_is_content_attention():
    torch.manual_seed(1)
    m = GPSA(16, 4)
    with torch.no_grad():
        m.gate.fill_(float("-inf"))
    x = torch.randn(2, 3, 3, 16)
    t = x.reshape(2, 9, 16)
    q, k = m.qk(t).reshape(2, 9, 2, 4, 4).permute(2, 0, 3, 1, 4)
    v = m.v(t).reshape(2, 9, 4, 4).transpose(1, 2)
    content = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    torch.testing.assert_close(m(x), m.proj(content.transpose(1, 2).reshape(2, 3, 3, 16)), atol=1e-5, rtol=1e-5)


def test_gpsa_rows_sum_to_one():
    torch.manual_seed(2)
    probs = GPSA(16, 4).probs(torch.randn(2, 3, 5, 16))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 15))
    assert (probs >= 0).all()


def test_gpsa_gradcheck_inputs_gate_and_positional_weights():
    torch.manual_seed(3)
    m = GPSA(8, 4, backend="reference").double()
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = m.pos_weight.detach().clone().requires_grad_()
    g = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, g: functional_call(m, {"pos_weight": w, "gate": g}, (x,)), (x, w, g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpsa_shape_and_dtype(dtype):
    torch.manual_seed(4)
    m = GPSA(16, 4).to(dtype)
    y = m(torch.randn(2, 4, 3, 16, dtype=dtype))
    assert y.shape == (2, 4, 3, 16) and y.dtype == dtype and not y.isnan().any()


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 12, "heads": 6}, r"local_init needs a square number of heads .* got heads=6"),
        ({"dim": 10, "heads": 4}, "dim must be divisible by heads, got dim=10, heads=4"),
        ({"dim": 8, "heads": 4, "locality_strength": 0.0}, "locality_strength must be > 0"),
    ],
)
def test_gpsa_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        GPSA(**kw)


def test_gpsa_non_square_heads_without_local_init():
    assert GPSA(12, 6, local_init=False)(torch.randn(1, 2, 2, 12)).shape == (1, 2, 2, 12)


def test_gpsa_rejects_sequence_input():
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C=8"):
        GPSA(8, 4)(torch.randn(2, 6, 8))


def test_gpsa_registered():
    assert isinstance(mechanisms.get("gpsa", dim=8, heads=4, locality_strength=2.0), GPSA)
