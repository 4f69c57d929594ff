"""The flex backend against the reference (slow: each new shape compiles for 20-45 s on CPU)."""

import warnings

import pytest
import torch

from attnlab.core import attend
from attnlab.core import masks as M
from attnlab.core.site import Edit

pytestmark = pytest.mark.slow


def _qkv(B, H, Hkv, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, D, generator=g).to(dtype) for h in (H, Hkv, Hkv)]


@pytest.mark.parametrize(
    "mask",
    [M.causal, M.sliding_window(16, 3) | M.prefix_lm(5), M.neighborhood(3, dilation=2, shape=(8, 12))],
    ids=repr,
)
def test_flex_forward_matches_reference(mask):
    q, k, v = _qkv(2, 4, 2, 96, 16)
    ref = attend(q, k, v, mask=mask, backend="reference")
    torch.testing.assert_close(attend(q, k, v, mask=mask, backend="flex"), ref, atol=1e-5, rtol=1e-5)


def test_flex_dense_mask_bias_and_logit_edit():
    q, k, v = _qkv(1, 2, 2, 96, 16, seed=1)
    allowed = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(2)) < 0.5
    allowed[:, :, 5] = False  # a row that sees nothing
    bias = torch.randn(1, 2, 96, 96)

    class Double(Edit):
        stage = "logits"

        def at(self, site):
            return lambda s, b, h, qi, ki: s * 2

    ref = attend(q, k, v, mask=allowed, bias=bias, edits=[Double()], backend="reference")
    out = attend(q, k, v, mask=allowed, bias=bias, edits=[Double()], backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out[:, :, 5] == 0).all()


def test_flex_falls_back_to_blocked_for_gradients_on_cpu():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 1, 40, 8))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = attend(q, k, v, mask=M.sliding_window(5), backend="flex")
    ref = attend(q, k, v, mask=M.sliding_window(5), backend="reference")
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), (q, k, v))
    r = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
