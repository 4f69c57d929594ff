"""Paper 67: MULTI-LANE token summarising, softmax(S Pᵀ / (τ·sqrt(C))) P."""

import math

import pytest
import torch
from torch.func import functional_call

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.summarize import TokenSummarizer
from attnlab.probes import Entropy


def _reference(sel: torch.Tensor, p: torch.Tensor, heads: int, temperature: float) -> torch.Tensor:
    """Per head: softmax(S_h P_hᵀ / (τ·sqrt(D))) P_h, heads concatenated; ``sel [S, C]``, ``p [B, N, C]``."""
    D = p.shape[-1] // heads
    outs = []
    for h in range(heads):
        s, ph = sel[:, h * D : (h + 1) * D], p[..., h * D : (h + 1) * D]
        w = torch.softmax(torch.einsum("sd,bnd->bsn", s, ph) / (temperature * math.sqrt(D)), dim=-1)  # [B, S, N]
        outs.append(w @ ph)  # [B, S, D]
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize(("heads", "temperature"), [(1, 1.0), (1, 0.3), (2, 1.0), (4, 2.0)])
def test_summarize_matches_explicit_softmax(heads, temperature):
    torch.manual_seed(0)
    m = TokenSummarizer(dim=16, heads=heads, temperature=temperature)
    x = torch.randn(3, 20, 16)
    torch.testing.assert_close(m(x), _reference(m.selectors, x, heads, temperature), atol=1e-5, rtol=1e-5)


def test_summarize_low_temperature_returns_nearest_token_exactly():
    torch.manual_seed(1)
    m = TokenSummarizer(dim=16, heads=1, temperature=1e-6)
    x = torch.randn(2, 30, 16)
    dots = torch.einsum("sc,bnc->bsn", m.selectors, x)  # [B, S, N]
    top2 = dots.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3, "the test needs a clear nearest token"
    nearest = x[torch.arange(2)[:, None], dots.argmax(-1)]  # [B, S, C]
    assert torch.equal(m(x), nearest)


def test_summarize_default_has_ten_selectors_and_output_shape():
    m = TokenSummarizer(dim=8, heads=2)
    assert m(torch.randn(4, 49, 8)).shape == (4, 10, 8)
    assert TokenSummarizer(dim=8, heads=1, selectors=3)(torch.randn(2, 5, 8)).shape == (2, 3, 8)


def test_summarize_gradcheck_inputs_and_selectors():
    torch.manual_seed(2)
    m = TokenSummarizer(dim=4, heads=2, selectors=3, backend="reference").double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    sel = m.selectors.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: functional_call(m, {"selectors": s}, (x.detach(),)), (sel,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_summarize_dtype_and_shape(dtype):
    torch.manual_seed(3)
    m = TokenSummarizer(dim=16, heads=2).to(dtype)
    out = m(torch.randn(2, 25, 16, dtype=dtype))
    assert out.shape == (2, 10, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_summarize_is_a_site():
    m = TokenSummarizer(dim=8, heads=2)
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        m(torch.randn(1, 6, 8))
    assert ent.result()["summarize"]["entropy"].shape == (2,)


def test_summarize_registered():
    assert isinstance(mechanisms.get("summarize", dim=8, heads=1, selectors=4), TokenSummarizer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 1, "selectors": 0}, r"selectors must be a positive int, got selectors=0"),
        ({"dim": 8, "heads": 1, "temperature": 0.0}, r"temperature must be a positive finite float, got temperature=0.0"),
        ({"dim": 8, "heads": 1, "temperature": float("inf")}, r"temperature must be a positive finite float, got temperature=inf"),
    ],
)
def test_summarize_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenSummarizer(**kwargs)


def test_summarize_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(1, 3, 6\)"):
        TokenSummarizer(dim=8, heads=1)(torch.randn(1, 3, 6))
