"""Paper 42: neighborhood attention against full attention, a key count, and a naive NATTEN loop."""

import itertools
import math

import pytest
import torch

import attnlab
from attnlab import mechanisms
from attnlab.core.site import Probe
from attnlab.mechanisms.neighborhood import NeighborhoodAttention


def _qkv(m, x):
    """The module's own q, k, v ``[B, H, T, D]`` (qkv output laid out as (three, heads, head_dim))."""
    B, C = x.shape[0], x.shape[-1]
    qkv = m.qkv(x.reshape(B, -1, C)).view(B, -1, 3, m.heads, C // m.heads)
    return qkv.permute(2, 0, 3, 1, 4)


def _natten_window_start(i, n, k, d):
    """NATTEN's window start (non-causal), as in its CPU kernels' ``get_window_start``."""
    ns = k // 2
    if d <= 1:
        return max(i - ns, 0) + (i + ns >= n) * (n - i - ns - 1)
    if i - ns * d < 0:
        return i % d
    if i + ns * d >= n:
        imodd, a = i % d, (n // d) * d
        b = n - a
        return n - b + imodd - 2 * ns * d if imodd < b else a + imodd - k * d
    return i - ns * d


def _natten_pb_start(i, n, k, d):
    """NATTEN's first rpb position of a query's window, as in ``get_pb_start``."""
    ns = k // 2
    if d <= 1:
        return ns + (i < ns) * (ns - i) + (i + ns >= n) * (n - i - 1 - ns)
    if i - ns * d < 0:
        return k - 1 - i // d
    if i + ns * d >= n:
        return (n - i - 1) // d
    return ns


def _axis_window(i, n, k, d, causal):
    """Keys of query coordinate ``i`` on one axis and their rpb positions."""
    if causal:  # the query and the k - 1 group members before it; rpb position = offset / d + k - 1
        return [(i - (k - 1 - j) * d, j) for j in range(k) if i - (k - 1 - j) * d >= 0]
    s, p = _natten_window_start(i, n, k, d), _natten_pb_start(i, n, k, d)
    return [(s + j * d, p + j) for j in range(k)]


def _naive(m, x):
    """Loop over queries: gather the window by NATTEN's rules, explicit softmax, output projection."""
    B, *grid, C = x.shape
    q, k, v = _qkv(m, x)
    out = torch.zeros_like(q)
    for coords in itertools.product(*(range(n) for n in grid)):
        axes = [_axis_window(c, n, kk, d, cz) for c, n, kk, d, cz in zip(coords, grid, m.kernel_size, m.dilation, m.is_causal)]
        keys, bias = [], []
        for combo in itertools.product(*axes):
            keys.append(sum(kc * math.prod(grid[a + 1 :]) for a, (kc, _) in enumerate(combo)))
            bias.append(m.rpb[(slice(None), *(p for _, p in combo))] if m.rpb is not None else torch.zeros(m.heads))
        i = sum(c * math.prod(grid[a + 1 :]) for a, c in enumerate(coords))
        logits = torch.einsum("bhd,bhkd->bhk", q[:, :, i], k[:, :, keys]) / math.sqrt(m.head_dim) + torch.stack(bias, -1)
        out[:, :, i] = torch.einsum("bhk,bhkd->bhd", logits.softmax(-1), v[:, :, keys])
    return m.proj(out.transpose(1, 2).reshape(B, -1, C)).view(x.shape)


class _VisibleKeys(Probe):
    """A probe recording how many keys get non-zero probability in every row."""

    def __init__(self):
        self.counts = []

    def observe(self, chunk, site):
        self.counts.append((chunk.probs > 0).sum(-1).flatten())

    def result(self):
        return {"neighborhood": torch.cat(self.counts)}


def test_neighborhood_kernel_equals_axis_length_is_full_attention():
    torch.manual_seed(0)
    m = NeighborhoodAttention(16, 2, kernel_size=(4, 5), rel_pos_bias=False)
    x = torch.randn(2, 4, 5, 16)
    q, k, v = _qkv(m, x)
    full = torch.softmax(q @ k.mT / math.sqrt(8), -1) @ v  # [B, H, T, D]
    expected = m.proj(full.transpose(1, 2).reshape(2, 20, 16)).view(x.shape)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("grid", "kernel", "dilation"),
    [((9, 7), 3, 1), ((9, 7), 3, (2, 1)), ((12,), 5, 2), ((4, 5, 3), (3, 3, 1), 1)],
)
def test_neighborhood_every_row_sees_k_keys(grid, kernel, dilation):
    torch.manual_seed(0)
    m = NeighborhoodAttention(8, 2, kernel_size=kernel, dilation=dilation, ndim=len(grid))
    probe = _VisibleKeys()
    with attnlab.attach(probes=[probe]):
        m(torch.randn(2, *grid, 8))
    counts = probe.result()["neighborhood"]
    assert counts.numel() == 2 * 2 * math.prod(grid)
    assert (counts == math.prod(m.kernel_size)).all()


@pytest.mark.parametrize(
    ("grid", "options"),
    [
        ((7, 6), {"kernel_size": 3}),
        ((7, 6), {"kernel_size": 3, "dilation": (2, 1)}),
        ((9, 8), {"kernel_size": (3, 5), "dilation": (3, 1)}),
        ((11,), {"kernel_size": 3, "dilation": 2, "ndim": 1}),
        ((11,), {"kernel_size": 3, "dilation": 2, "is_causal": True, "ndim": 1}),
        ((6, 5), {"kernel_size": 3, "is_causal": (True, False)}),
        ((3, 4, 6), {"kernel_size": 3, "dilation": (1, 1, 2), "ndim": 3}),
    ],
)
def test_neighborhood_matches_naive_natten_loop(grid, options):
    torch.manual_seed(0)
    m = NeighborhoodAttention(16, 2, **options)
    with torch.no_grad():
        m.rpb.normal_()  # a visible bias, so a wrong rpb position breaks the test
    x = torch.randn(2, *grid, 16)
    torch.testing.assert_close(m(x), _naive(m, x), atol=1e-5, rtol=1e-5)


def test_neighborhood_blocked_equals_reference_on_a_larger_grid():
    torch.manual_seed(0)
    m = NeighborhoodAttention(16, 2, kernel_size=5, dilation=(1, 2), backend="blocked")
    x = torch.randn(1, 16, 18, 16)
    out = m(x)
    m.backend = "reference"
    torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)


def test_neighborhood_causal_output_ignores_future_tokens():
    torch.manual_seed(0)
    m = NeighborhoodAttention(8, 2, kernel_size=3, is_causal=True, ndim=1)
    x = torch.randn(1, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6])
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_neighborhood_gradcheck(backend):
    torch.manual_seed(0)
    m = NeighborhoodAttention(4, 2, kernel_size=(3, 2), dilation=(1, 2), backend=backend).double()
    with torch.no_grad():
        m.rpb.normal_()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)
    rpb_grad = torch.autograd.grad(m(x).sum(), m.rpb)[0]
    assert rpb_grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neighborhood_dtypes(dtype):
    torch.manual_seed(0)
    m = mechanisms.get("neighborhood", dim=16, heads=2, kernel_size=3).to(dtype)
    out = m(torch.randn(2, 6, 7, 16, dtype=dtype))
    assert out.shape == (2, 6, 7, 16) and out.dtype == dtype and not out.isnan().any()


def test_neighborhood_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        NeighborhoodAttention(10, 3)
    with pytest.raises(ValueError, match="ndim must be 1, 2 or 3"):
        NeighborhoodAttention(8, 2, ndim=4)
    with pytest.raises(ValueError, match="kernel_size needs one value or one per axis"):
        NeighborhoodAttention(8, 2, kernel_size=(3, 3, 3))
    with pytest.raises(TypeError, match="dilation must be an int"):
        NeighborhoodAttention(8, 2, dilation=1.5)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        NeighborhoodAttention(8, 2, kernel_size=0)
    with pytest.raises(ValueError, match="channels-last"):
        NeighborhoodAttention(8, 2)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="kernel_size \\* dilation must not exceed the axis length"):
        NeighborhoodAttention(8, 2, kernel_size=5)(torch.randn(1, 4, 6, 8))
