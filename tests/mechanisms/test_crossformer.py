"""Paper 70: CrossFormer SDA and LDA against explicit masked softmax, DPB translation invariance, CEL."""

import contextlib
import math

import pytest
import torch

import attnlab
from attnlab import mechanisms
from attnlab.core.site import Edit, Probe
from attnlab.mechanisms.crossformer import CrossFormerAttention, CrossScaleEmbedding


class _Idle(Edit):
    """An edit that touches no site: attached, it sends the module down its grid path."""

    stage = "output"

    def at(self, site):
        return None


@pytest.fixture(params=["windows", "grid"])
def path(request):
    """Run the test on the gathered-windows path and on the whole-grid path (what probes and edits see)."""
    return contextlib.nullcontext if request.param == "windows" else lambda: attnlab.attach(edits=[_Idle()])


def _reference(m, x):
    """Dense same-group mask, DPB on every (query, key) offset, explicit softmax."""
    B, H, W, C = x.shape
    q, k, v = m.qkv(x).view(B, H * W, 3, m.heads, C // m.heads).permute(2, 0, 3, 1, 4)  # [B, heads, T, D]
    y, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    y, xx = y.flatten(), xx.flatten()
    if m.kind == "sda":  # same G×G window; offsets inside the window
        G = m.group
        same = (y[:, None] // G == y[None, :] // G) & (xx[:, None] // G == xx[None, :] // G)
        py, px = y % G, xx % G
    else:  # same residues mod I; offsets on the group's own grid
        I = m.interval
        same = (y[:, None] % I == y[None, :] % I) & (xx[:, None] % I == xx[None, :] % I)
        py, px = y // I, xx // I
    offsets = torch.stack([py[:, None] - py[None, :], px[:, None] - px[None, :]], -1).float()  # [T, T, 2] query minus key
    bias = m.dpb(offsets).permute(2, 0, 1)  # [heads, T, T]
    logits = q @ k.mT / math.sqrt(m.head_dim) + bias
    out = logits.masked_fill(~same, float("-inf")).softmax(-1) @ v
    return m.proj(out.permute(0, 2, 1, 3).reshape(B, H, W, C))


class _Probs(Probe):
    """A probe keeping the whole probability matrix (tiny inputs only)."""

    def __init__(self):
        self.rows = []

    def observe(self, chunk, site):
        p = torch.zeros(*chunk.probs.shape[:3], chunk.lk)
        p[..., chunk.kv_start : chunk.kv_start + chunk.probs.shape[-1]] = chunk.probs
        self.rows.append(p)

    def result(self):
        return {"crossformer": torch.cat(self.rows, dim=2)}


@pytest.mark.parametrize(("size", "group"), [((8, 12), 4), ((9, 10), 4), ((7, 7), 7)])
def test_crossformer_sda_equals_masked_reference(path, size, group):
    torch.manual_seed(0)
    m = CrossFormerAttention(16, 2, kind="sda", group=group)
    x = torch.randn(2, *size, 16)
    with path():
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("size", "interval"), [((8, 12), 4), ((9, 10), 4), ((6, 6), 2)])
def test_crossformer_lda_equals_masked_reference(path, size, interval):
    torch.manual_seed(0)
    m = CrossFormerAttention(16, 2, kind="lda", interval=interval)
    x = torch.randn(2, *size, 16)
    with path():
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sda", "lda"])
def test_crossformer_grid_path_blocked_equals_reference_on_a_larger_grid(kind):
    torch.manual_seed(0)
    m = CrossFormerAttention(16, 2, kind=kind, group=7, interval=4, backend="blocked")
    x = torch.randn(1, 17, 20, 16)
    with attnlab.attach(edits=[_Idle()]):
        out = m(x)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-5, rtol=1e-5)


def test_crossformer_dpb_gives_the_same_bias_to_the_same_offset():
    torch.manual_seed(0)
    m = CrossFormerAttention(16, 2, kind="sda", group=3)
    with torch.no_grad():
        m.qkv.weight.zero_()
        m.qkv.bias.zero_()  # q·k = 0: the logits are the position bias alone
    probe = _Probs()
    with attnlab.attach(probes=[probe]):
        m(torch.randn(1, 6, 6, 16))
    p = probe.result()["crossformer"][0].view(2, 6, 6, 6, 6)  # [heads, qy, qx, ky, kx]
    window = p[:, 0:3, 0:3, 0:3, 0:3]
    for wy, wx in [(0, 3), (3, 0), (3, 3)]:  # every other window: same offsets, same rows
        torch.testing.assert_close(p[:, wy : wy + 3, wx : wx + 3, wy : wy + 3, wx : wx + 3], window)
    assert not torch.allclose(window[:, 0, 0], window[:, 1, 1])  # the bias does depend on the offset


def test_crossformer_cel_shape_and_channel_split():
    cel = CrossScaleEmbedding(3, 64)
    assert [c.kernel_size[0] for c in cel.convs] == [4, 8, 16, 32]
    assert [c.out_channels for c in cel.convs] == [32, 16, 8, 8]
    x = torch.randn(2, 32, 24, 3)
    assert cel(x).shape == (2, 8, 6, 64)
    merge = CrossScaleEmbedding(64, 128, kernels=(2, 4), norm=False)
    out = merge(cel(x))
    assert out.shape == (2, 4, 3, 128)
    first = merge.convs[0](cel(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out[..., :64], first)  # concatenated in kernel order


@pytest.mark.parametrize("kind", ["sda", "lda"])
def test_crossformer_gradcheck(path, kind):
    torch.manual_seed(0)
    m = CrossFormerAttention(4, 2, kind=kind, group=2, interval=2).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    with path():
        assert torch.autograd.gradcheck(m, (x,), fast_mode=True)
        grads = torch.autograd.grad(m(x).sum(), list(m.dpb.parameters()))
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", ["sda", "lda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_crossformer_dtypes(path, kind, dtype):
    torch.manual_seed(0)
    m = mechanisms.get("crossformer", dim=16, heads=2, kind=kind, group=4, interval=3).to(dtype)
    with path():
        out = m(torch.randn(2, 8, 6, 16, dtype=dtype))
    assert out.shape == (2, 8, 6, 16) and out.dtype == dtype and not out.isnan().any()


def test_crossformer_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        CrossFormerAttention(10, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        CrossFormerAttention(8, 2, kind="global")
    with pytest.raises(ValueError, match="group must be a positive int"):
        CrossFormerAttention(8, 2, group=0)
    with pytest.raises(ValueError, match="interval must not exceed the grid"):
        CrossFormerAttention(8, 2, kind="lda", interval=8)(torch.randn(1, 6, 6, 8))
    with pytest.raises(ValueError, match="channels-last"):
        CrossFormerAttention(8, 2)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="dim must be divisible by 2"):
        CrossScaleEmbedding(3, 36)
    with pytest.raises(ValueError, match="even difference"):
        CrossScaleEmbedding(3, 64, kernels=(4, 7))
