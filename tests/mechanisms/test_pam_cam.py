"""Position and channel attention modules (paper 43): identity at init, PAM = SDPA, CAM = its einsum formula."""

import pytest
import torch
import torch.nn.functional as F

from attnlab import mechanisms
from attnlab.mechanisms.pam_cam import ChannelAttention, PamCam, PositionAttention


def _cam_reference(x: torch.Tensor) -> torch.Tensor:
    """DANet's CAM: softmax(rowmax(S) − S) X with S = Xᵀ X over channels."""
    B, Hg, Wg, C = x.shape
    X = x.reshape(B, Hg * Wg, C)  # [B, N, C]
    S = torch.einsum("bnc,bnd->bcd", X, X)  # [B, C, C]
    A = torch.softmax(S.amax(-1, keepdim=True) - S, dim=-1)
    return torch.einsum("bcd,bnd->bnc", A, X).reshape(B, Hg, Wg, C)


def _pam_reference(pam: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """PAM as SDPA over the flattened H·W tokens, unscaled logits."""
    B, Hg, Wg, C = x.shape
    t = x.reshape(B, 1, Hg * Wg, C)
    out = F.scaled_dot_product_attention(pam.query(t), pam.key(t), pam.value(t), scale=1.0)  # [B, 1, N, C]
    return out.reshape(B, Hg, Wg, C)


@pytest.mark.parametrize("make", [lambda: PamCam(16), lambda: PositionAttention(16), lambda: ChannelAttention(16)])
def test_pam_cam_identity_at_init(make):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 16)
    assert torch.equal(make()(x), x)


def test_pam_equals_sdpa_on_flattened_tokens():
    torch.manual_seed(1)
    pam = PositionAttention(16)
    with torch.no_grad():
        pam.gamma.fill_(1.0)
    x = torch.randn(2, 3, 4, 16)
    torch.testing.assert_close(pam(x) - x, _pam_reference(pam, x), atol=1e-5, rtol=1e-5)


def test_pam_heads_split_the_reduced_channels():
    torch.manual_seed(2)
    pam = PositionAttention(32, 2, reduction=4)
    x = torch.randn(1, 3, 3, 32)
    t = x.reshape(1, 9, 32)
    q, k, v = (f(t).reshape(1, 9, 2, -1).transpose(1, 2) for f in (pam.query, pam.key, pam.value))
    expected = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).reshape(1, 3, 3, 32)
    torch.testing.assert_close(pam.attention(x), expected, atol=1e-5, rtol=1e-5)


def test_cam_equals_its_einsum_formula():
    torch.manual_seed(3)
    cam = ChannelAttention(8)
    with torch.no_grad():
        cam.gamma.fill_(0.7)
    x = 0.3 * torch.randn(2, 3, 3, 8)
    torch.testing.assert_close(cam(x), x + 0.7 * _cam_reference(x), atol=1e-5, rtol=1e-5)


def test_pam_cam_sums_both_attentions_with_one_residual():
    torch.manual_seed(4)
    m = PamCam(16)
    with torch.no_grad():
        m.pam.gamma.fill_(0.5)
        m.cam.gamma.fill_(-0.25)
    x = 0.3 * torch.randn(2, 2, 3, 16)
    expected = x + 0.5 * _pam_reference(m.pam, x) - 0.25 * _cam_reference(x)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_pam_cam_gradcheck():
    torch.manual_seed(5)
    m = PamCam(8, 1, backend="reference").double()
    with torch.no_grad():
        m.pam.gamma.fill_(0.5)
        m.cam.gamma.fill_(0.3)
    x = 0.5 * torch.randn(1, 2, 3, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(m, (x.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pam_cam_shape_and_dtype(dtype):
    torch.manual_seed(6)
    m = PamCam(16).to(dtype)
    with torch.no_grad():
        m.pam.gamma.fill_(1.0)
        m.cam.gamma.fill_(1.0)
    y = m(torch.randn(2, 3, 4, 16, dtype=dtype))
    assert y.shape == (2, 3, 4, 16) and y.dtype == dtype and not y.isnan().any()


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 16, "heads": 3}, r"divisible by heads, got dim=16, dim // reduction=2, heads=3"),
        ({"dim": 4, "heads": 1}, r"reduction must be a positive integer at most dim, got reduction=8, dim=4"),
        ({"dim": 16, "heads": 0}, "positive integers"),
    ],
)
def test_pam_cam_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        PamCam(**kw)


def test_pam_cam_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C=16, got shape \(2, 16, 4, 4\)"):
        PamCam(16)(torch.randn(2, 16, 4, 4))


def test_pam_cam_registered():
    assert isinstance(mechanisms.get("pam_cam", dim=16, heads=1, reduction=4), PamCam)
