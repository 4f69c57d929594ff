"""Paper 20: HaloNet attention against an explicit masked-window softmax, in both padding modes."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import mechanisms
from attnlab.core.site import Edit
from attnlab.mechanisms.halo import HaloAttention


class _Idle(Edit):
    """An edit that touches no site: attached, it sends the module down its grid path."""

    stage = "output"

    def at(self, site):
        return None


@pytest.fixture(params=["windows", "grid"])
def path(request):
    """Run the test on the gathered-windows path and on the whole-grid path (what probes and edits see)."""
    return contextlib.nullcontext if request.param == "windows" else lambda: attnlab.attach(edits=[_Idle()])


def _qkv(m, x):
    """The module's q, k, v ``[B, heads, H, W, D]`` (qkv output laid out as (three, heads, head_dim))."""
    B, H, W, C = x.shape
    return m.qkv(x).view(B, H, W, 3, m.heads, C // m.heads).permute(3, 0, 4, 1, 2, 5)


def _reference(m, x):
    """Dense logits over the image padded by ``halo`` zeros, an explicit window mask, explicit softmax."""
    B, H, W, C = x.shape
    b, h = m.block, m.halo
    q, k, v = _qkv(m, x)
    k, v = (F.pad(t, (0, 0, h, h, h, h)).flatten(2, 3) for t in (k, v))  # [B, heads, (H+2h)(W+2h), D], zeros outside
    qy, qx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(-h, H + h), torch.arange(-h, W + h), indexing="ij")
    qy, qx, ky, kx = qy.reshape(-1, 1), qx.reshape(-1, 1), ky.reshape(1, -1), kx.reshape(1, -1)
    in_window = (ky >= qy // b * b - h) & (ky < qy // b * b + b + h) & (kx >= qx // b * b - h) & (kx < qx // b * b + b + h)
    if m.pad_mode == "mask":
        in_window &= (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
    span = b + h - 1
    dy, dx = (ky - qy).clamp(-span, span) + span, (kx - qx).clamp(-span, span) + span  # [T, Tk], valid inside the window
    qf = q.flatten(2, 3)  # [B, heads, T, D]
    rel = torch.einsum("bhtd,tkd->bhtk", qf, m.rel_h[dy]) + torch.einsum("bhtd,tkd->bhtk", qf, m.rel_w[dx])
    logits = qf @ k.mT / math.sqrt(m.head_dim) + rel
    probs = logits.masked_fill(~in_window, float("-inf")).softmax(-1)
    out = (probs @ v).permute(0, 2, 1, 3).reshape(B, H, W, C)
    return m.proj(out)


@pytest.mark.parametrize("rows", [None, 1, 2])
@pytest.mark.parametrize("pad_mode", ["zeros", "mask"])
@pytest.mark.parametrize(("size", "block", "halo"), [((8, 12), 4, 1), ((6, 6), 2, 3), ((8, 8), 4, 0)])
def test_halo_equals_masked_window_reference(path, pad_mode, size, block, halo, rows, monkeypatch):
    """``rows``: block rows per slab of the windows path (None: the whole image in one)."""
    torch.manual_seed(0)
    m = HaloAttention(16, 2, block=block, halo=halo, pad_mode=pad_mode)
    x = torch.randn(2, *size, 16)
    if rows:
        monkeypatch.setattr("attnlab.mechanisms.halo.SLAB_TOKENS", rows * 2 * size[1] * block)
    with path():
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad_mode", ["zeros", "mask"])
def test_halo_grid_path_blocked_equals_reference_on_a_larger_image(pad_mode):
    torch.manual_seed(0)
    m = HaloAttention(16, 2, block=4, halo=3, pad_mode=pad_mode, backend="blocked")
    x = torch.randn(1, 16, 20, 16)
    with attnlab.attach(edits=[_Idle()]):
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


def test_halo_covering_the_image_equals_global_attention(path):
    torch.manual_seed(0)
    m = HaloAttention(16, 2, block=4, halo=8, pad_mode="mask")
    with torch.no_grad():
        m.rel_h.zero_()
        m.rel_w.zero_()
    x = torch.randn(2, 8, 12, 16)
    q, k, v = (t.flatten(2, 3) for t in _qkv(m, x))  # [B, heads, T, D]
    full = torch.softmax(q @ k.mT / math.sqrt(8), -1) @ v
    expected = m.proj(full.permute(0, 2, 1, 3).reshape(x.shape))
    with path():
        out = m(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_halo_pad_modes_differ_only_at_the_border():
    torch.manual_seed(0)
    zeros = HaloAttention(16, 2, block=4, halo=1, pad_mode="zeros")
    mask = HaloAttention(16, 2, block=4, halo=1, pad_mode="mask")
    mask.load_state_dict(zeros.state_dict())
    x = torch.randn(1, 12, 12, 16)
    a, b = zeros(x), mask(x)
    with attnlab.attach(edits=[_Idle()]):
        torch.testing.assert_close(zeros(x), a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:, 4:8, 4:8], b[:, 4:8, 4:8])  # the centre block's window lies inside the image
    assert not torch.allclose(a[:, :4], b[:, :4], atol=1e-4)


@pytest.mark.parametrize("pad_mode", ["zeros", "mask"])
def test_halo_gradcheck(path, pad_mode, monkeypatch):
    torch.manual_seed(0)
    m = HaloAttention(4, 2, block=2, halo=1, pad_mode=pad_mode).double()
    monkeypatch.setattr("attnlab.mechanisms.halo.SLAB_TOKENS", 1)  # one block row per slab
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    rel = [m.rel_h.detach().clone().requires_grad_(), m.rel_w.detach().clone().requires_grad_()]

    def f(x, rel_h, rel_w):
        return torch.func.functional_call(m, {"rel_h": rel_h, "rel_w": rel_w}, (x,))

    with path():
        assert torch.autograd.gradcheck(f, (x, *rel), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_halo_dtypes(path, dtype):
    torch.manual_seed(0)
    m = mechanisms.get("halo", dim=16, heads=2, block=4, halo=2).to(dtype)
    with path():
        out = m(torch.randn(2, 8, 8, 16, dtype=dtype))
    assert out.shape == (2, 8, 8, 16) and out.dtype == dtype and not out.isnan().any()


def test_halo_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        HaloAttention(10, 3)
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        HaloAttention(8, 2, pad_mode="reflect")
    with pytest.raises(ValueError, match="halo must be an integer >= 0"):
        HaloAttention(8, 2, halo=-1)
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        HaloAttention(8, 2, block=0)
    with pytest.raises(ValueError, match="multiples of block=8"):
        HaloAttention(8, 2)(torch.randn(1, 12, 16, 8))
    with pytest.raises(ValueError, match="channels-last"):
        HaloAttention(8, 2, block=4)(torch.randn(1, 8, 4, 4))
