"""MEDUSA (paper 46): one self-attention body, gates at every scale."""

import pytest
import torch
import torch.nn.functional as F

from attnlab import mechanisms
from attnlab.mechanisms.medusa import Medusa


def _body(m: Medusa, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention over the H·W tokens by explicit softmax."""
    B, Hg, Wg, C = x.shape
    H, D = m.heads, C // m.heads
    q, k, v = m.qkv(x.reshape(B, Hg * Wg, C)).reshape(B, Hg * Wg, 3, H, D).permute(2, 0, 3, 1, 4)
    out = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1) @ v
    return m.proj(out.transpose(1, 2).reshape(B, Hg, Wg, C))


def test_medusa_gates_each_scale_with_the_shared_attention():
    torch.manual_seed(0)
    m = Medusa(8, 2, feature_dims=(3, 5, 6))
    x = torch.randn(2, 4, 4, 8)
    feats = [torch.randn(2, 4, 4, 3), torch.randn(2, 2, 2, 5), torch.randn(2, 8, 8, 6)]
    out = m(x, feats)
    a = _body(m, x)  # [B, 4, 4, C]
    same = torch.sigmoid(m.gates[0](a))
    pooled = torch.sigmoid(m.gates[1](a.reshape(2, 2, 2, 2, 2, 8).mean(dim=(2, 4))))  # 2×2 average pooling
    up = F.interpolate(a.permute(0, 3, 1, 2), size=(8, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    for o, f, g in zip(out, feats, (same, pooled, torch.sigmoid(m.gates[2](up)))):
        torch.testing.assert_close(o, f * g, atol=1e-5, rtol=1e-5)


def test_medusa_shapes_at_every_scale():
    torch.manual_seed(1)
    m = Medusa(16, 4)  # four maps of 16 channels by default
    x = torch.randn(2, 8, 8, 16)
    feats = [torch.randn(2, s, s, 16) for s in (16, 8, 4, 2)]
    assert [o.shape for o in m(x, feats)] == [f.shape for f in feats]


def test_medusa_gates_in_open_unit_interval():
    torch.manual_seed(2)
    m = Medusa(8, 2, feature_dims=(4, 8))
    gates = m.gate_maps(torch.randn(3, 6, 6, 8), [(3, 3), (12, 12)])
    assert [tuple(g.shape) for g in gates] == [(3, 3, 3, 4), (3, 12, 12, 8)]
    assert all(((g > 0) & (g < 1)).all() for g in gates)


def test_medusa_gradcheck():
    torch.manual_seed(3)
    m = Medusa(4, 2, feature_dims=(2, 3), backend="reference").double()
    x = torch.randn(1, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    f1 = torch.randn(1, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, f1, f2: tuple(m(x, [f1, f2])), (x, f1, f2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_medusa_shape_and_dtype(dtype):
    torch.manual_seed(4)
    m = Medusa(8, 2, feature_dims=(4, 8)).to(dtype)
    out = m(torch.randn(2, 4, 4, 8, dtype=dtype), [torch.randn(2, 8, 8, 4, dtype=dtype), torch.randn(2, 2, 2, 8, dtype=dtype)])
    assert [o.shape for o in out] == [(2, 8, 8, 4), (2, 2, 2, 8)]
    assert all(o.dtype == dtype and not o.isnan().any() for o in out)


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 10, "heads": 4}, "dim must be divisible by heads, got dim=10, heads=4"),
        ({"dim": 8, "heads": 2, "feature_dims": ()}, "feature_dims must be a non-empty sequence"),
        ({"dim": 8, "heads": 2, "feature_dims": (4, 0)}, "feature_dims must be a non-empty sequence"),
    ],
)
def test_medusa_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        Medusa(**kw)


def test_medusa_bad_features_raise():
    m = Medusa(8, 2, feature_dims=(4, 8))
    x = torch.randn(2, 4, 4, 8)
    with pytest.raises(ValueError, match=r"expected 2 feature maps \(feature_dims=\(4, 8\)\), got 1"):
        m(x, [torch.randn(2, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"features\[1\] must be \[B, H, W, C\] with B=2, C=8, got shape \(2, 8, 4, 4\)"):
        m(x, [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4)])


def test_medusa_registered():
    assert isinstance(mechanisms.get("medusa", dim=8, heads=2, feature_dims=(4,)), Medusa)
