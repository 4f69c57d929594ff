"""SSMA fusion (paper 25): fused = BN(conv(σ(W₂ ∗ ReLU(W₁ ∗ [a; b])) ⊙ [a; b]))."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnlab import operators
from attnlab.operators.ssma import SSMAFusion, noisy_modalities

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_gate_matches_the_formula():
    torch.manual_seed(0)
    m = SSMAFusion(8, reduction=4)
    a, b = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    x = torch.cat([a, b], 1)
    h = F.relu(F.conv2d(x, m.squeeze.weight, m.squeeze.bias, padding=1))
    s = torch.sigmoid(F.conv2d(h, m.excite.weight, m.excite.bias, padding=1))
    assert m.squeeze.out_channels == 16 // 4
    torch.testing.assert_close(m.gate(a, b), s)
    m.eval()
    torch.testing.assert_close(m(a, b), m.fuse(s * x))


def test_gate_fixed_at_one_is_the_plain_stream():
    torch.manual_seed(1)
    m = SSMAFusion(6, reduction=4).double().eval()
    with torch.no_grad():
        m.excite.weight.zero_()
        m.excite.bias.fill_(40.0)  # σ(40) == 1 in float64
    a, b = torch.randn(2, 6, 4, 4, dtype=torch.float64), torch.randn(2, 6, 4, 4, dtype=torch.float64)
    assert (m.gate(a, b) == 1).all()
    torch.testing.assert_close(m(a, b), m.fuse(torch.cat([a, b], 1)), rtol=0, atol=0)


def test_gradcheck():
    torch.manual_seed(2)
    m = SSMAFusion(4, reduction=2).double().eval()
    a = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (a, b))


@pytest.mark.slow
def test_noisy_modality_is_gated_down():
    """PAPERS.md check: after a short training, the noisy modality's gate mean < 0.3, the clean one's > 0.7."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    m = SSMAFusion(16)
    head = nn.Conv2d(16, 1, 1)
    opt = torch.optim.Adam([*m.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(120):
        a, b, z, _ = noisy_modalities(32, generator=g)
        loss = F.mse_loss(head(m(a, b)), z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b, z, noisy_a = noisy_modalities(256, generator=g)
    with torch.no_grad():
        s = m.gate(a, b)  # (n, 2C, H, W)
    per_modality = torch.stack([s[:, :16].mean((1, 2, 3)), s[:, 16:].mean((1, 2, 3))], 1)  # (n, 2)
    noisy = per_modality[torch.arange(256), (~noisy_a).long()].mean()
    clean = per_modality[torch.arange(256), noisy_a.long()].mean()
    assert noisy < 0.3 and clean > 0.7, f"gate means: noisy modality {noisy:.2f}, clean {clean:.2f}"


def test_noisy_modalities_bury_one_view_per_sample():
    a, b, z, noisy_a = noisy_modalities(64, channels=4, generator=torch.Generator().manual_seed(0))
    clean = torch.where(noisy_a[:, None, None, None], b, a)
    noisy = torch.where(noisy_a[:, None, None, None], a, b)
    assert (clean - z).abs().mean() < 0.1 and noisy.std() > 2.5 and 0.3 < noisy_a.float().mean() < 0.7


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        SSMAFusion(4, kernel_size=2)
    with pytest.raises(ValueError, match="reduction must be a positive integer, got reduction=0"):
        SSMAFusion(4, reduction=0)
    m = SSMAFusion(4)
    with pytest.raises(ValueError, match=r"with C=4 \(channels-first\), got shapes \(1, 3, 3, 4\) and \(1, 3, 3, 4\)"):
        m(torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 4))
    with pytest.raises(ValueError, match="must both be"):
        m(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 2))


def test_registered():
    assert operators.get("ssma_fusion") is SSMAFusion and SSMAFusion.paper == "25"
