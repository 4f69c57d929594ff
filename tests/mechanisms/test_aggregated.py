"""Paper 58: TransNeXt aggregated attention, checked against a naive per-pixel gather."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.aggregated import AggregatedAttention
from attnlab.probes import Entropy


def _naive(m, x):
    """Aggregated attention pixel by pixel: explicit neighbour lists, one explicit softmax per query."""
    B, H, W, C = x.shape
    h, k = m.heads, m.kernel_size
    d, p = C // h, k // 2
    ph, pw = m.pool_size
    P = ph * pw
    q = F.normalize(F.linear(x, m.q.weight, m.q.bias).view(B, H, W, h, d), dim=-1)
    key, val = F.linear(x, m.kv.weight, m.kv.bias).view(B, H, W, 2, h, d).unbind(3)
    key = F.normalize(key, dim=-1)
    # Pooled tokens: 1x1 projection, GELU, average over each adaptive-pooling bin, LayerNorm.
    bins_y = [(math.floor(i * H / ph), math.ceil((i + 1) * H / ph)) for i in range(ph)]
    bins_x = [(math.floor(j * W / pw), math.ceil((j + 1) * W / pw)) for j in range(pw)]
    s = F.gelu(F.linear(x, m.sr.weight, m.sr.bias))
    pooled = torch.stack([s[:, y0:y1, x0:x1].mean((1, 2)) for (y0, y1) in bins_y for (x0, x1) in bins_x], 1)  # [B, P, C]
    pooled = F.layer_norm(pooled, (C,), m.norm.weight, m.norm.bias)
    kp, vp = F.linear(pooled, m.kv.weight, m.kv.bias).view(B, P, 2, h, d).unbind(2)  # [B, P, h, d]
    kp = F.normalize(kp, dim=-1)
    centres = [((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2) for (y0, y1) in bins_y for (x0, x1) in bins_x]
    offsets = list(itertools.product(range(-p, p + 1), repeat=2))  # (dy, dx), offset index o = (dy+p)*k + (dx+p)
    out = torch.zeros(B, H, W, h, d, dtype=x.dtype)
    for y, c in itertools.product(range(H), range(W)):
        nbrs = [(o, y + dy, c + dx) for o, (dy, dx) in enumerate(offsets) if 0 <= y + dy < H and 0 <= c + dx < W]
        qs = (q[:, y, c] + m.query_embedding) * F.softplus(m.temperature)[:, None] * math.log(len(nbrs) + P)  # [B, h, d]
        local = torch.stack([(qs * key[:, yy, xx]).sum(-1) + m.local_bias[:, o] for o, yy, xx in nbrs], -1)  # [B, h, n]
        rel = torch.tensor([[(y - cy) * 8 / max(H - 1, 1), (c - cx) * 8 / max(W - 1, 1)] for cy, cx in centres], dtype=x.dtype)
        cpb = m.cpb(torch.sign(rel) * torch.log2(rel.abs() + 1) / math.log2(8)).T  # [h, P]
        pool = torch.einsum("bhd,bphd->bhp", qs, kp) + cpb
        prob = torch.softmax(torch.cat([local, pool], -1), dim=-1)  # one softmax over both
        v_local = torch.stack([val[:, yy, xx] for _, yy, xx in nbrs], 1)  # [B, n, h, d]
        o_ = torch.einsum("bhn,bnhd->bhd", prob[..., : len(nbrs)], v_local) + torch.einsum("bhp,bphd->bhd", prob[..., len(nbrs) :], vp)
        if m.learnable_tokens is not None:
            for j, (o, _, _) in enumerate(nbrs):
                w = (q[:, y, c] * m.learnable_tokens[:, :, o]).sum(-1) + m.learnable_bias[:, o]  # [B, h]
                o_ = o_ + w[..., None] * v_local[:, j]
        out[:, y, c] = o_
    return F.linear(out.reshape(B, H, W, C), m.proj.weight, m.proj.bias)


def _randomise(m):
    """Spread the small initial biases so that a wrong index or sign cannot hide."""
    with torch.no_grad():
        for p in (m.local_bias, m.query_embedding, m.temperature, *(() if m.learnable_bias is None else (m.learnable_bias,))):
            p.normal_()
    return m


@pytest.mark.parametrize(
    "H, W, kwargs",
    [
        (4, 4, dict(block=4, pool_size=2)),  # one block, every border query
        (7, 6, dict(block=4, pool_size=(3, 2))),  # padded blocks, uneven pooling bins
        (5, 9, dict(block=2, pool_size=2, kernel_size=5)),  # 5x5 neighbourhoods, many blocks
        (6, 5, dict(block=8, pool_size=7, learnable_tokens=False)),  # block larger than the image, pooling upsamples
        (1, 5, dict(block=4, pool_size=1)),  # a single row: every query is on a border
    ],
)
def test_aggregated_equals_naive_gather(H, W, kwargs):
    torch.manual_seed(0)
    m = _randomise(AggregatedAttention(16, 2, **kwargs))
    x = torch.randn(2, H, W, 16)
    torch.testing.assert_close(m(x), _naive(m, x), atol=1e-5, rtol=1e-5)


def test_aggregated_corner_query_sees_only_in_image_neighbours():
    # Keys off the image must get no attention: a corner query's output ignores the far side.
    torch.manual_seed(1)
    m = AggregatedAttention(8, 2, pool_size=1, block=4, learnable_tokens=False)
    x = torch.randn(1, 5, 5, 8)
    x2 = x.clone()
    x2[:, 2:, :] += 10.0 * torch.randn(1, 3, 5, 8)  # rows 2.. are outside (0, 0)'s 3x3 window; pooled token changes too
    m.sr.weight.data.zero_()
    m.sr.bias.data.zero_()  # pooled token no longer depends on x
    torch.testing.assert_close(m(x)[:, 0, 0], m(x2)[:, 0, 0])
    assert not torch.allclose(m(x)[:, 1, 1], m(x2)[:, 1, 1])


def test_aggregated_probes_see_one_row_per_token():
    # Block slots off the image are empty rows; every real row sees its neighbours and the pooled tokens.
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        AggregatedAttention(16, 2, pool_size=2, block=4)(torch.randn(2, 5, 7, 16))
    assert ent.result()["aggregated"]["rows"].tolist() == [2 * 5 * 7] * 2


def test_aggregated_gradcheck_inputs_and_bias_parameters():
    torch.manual_seed(2)
    m = _randomise(AggregatedAttention(4, 2, pool_size=2, block=2, backend="reference")).double()
    names = ["local_bias", "temperature", "query_embedding", "cpb.2.bias", "learnable_bias"]
    params = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters() if n in names}
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(m, dict(zip(params, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("seed, zeros, sign", [(0, 0, 0), (1, 5, 0), (2, 3, 1), (3, 0, -1)])
def test_aggregated_cpb_sweep_equals_the_mlp_with_gradients(seed, zeros, sign):
    """The CPB table by sweep equals the MLP on every (cy, cx) pair, values and parameter gradients.

    Some units get u = W1[c, 1] = 0 exactly (``zeros``), or all u one sign (``sign``: one sweep is empty).
    """
    torch.manual_seed(seed)
    m = AggregatedAttention(9, 3, pool_size=(5, 3)).double()
    for p in m.cpb.parameters():
        torch.nn.init.normal_(p)
    u = m.cpb[0].weight.data[:, 1]
    u[:zeros] = 0.0
    if sign:
        u.abs_().mul_(sign)
    g = mechanisms.aggregated._geometry(19, 11, 3, 4, (5, 3), "cpu")
    cy, cx = g.cy.double(), g.cx.double()
    pairs = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), dim=-1)  # [Uy, Ux, 2]
    ref, ours = m.cpb(pairs), m._cpb_table(cy, cx)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    go = torch.randn(ref.shape, dtype=torch.float64)
    params = list(m.cpb.parameters())
    for a, b in zip(torch.autograd.grad(ours, params, go), torch.autograd.grad(ref, params, go)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aggregated_shape_and_dtype(dtype):
    torch.manual_seed(3)
    m = mechanisms.get("aggregated", dim=16, heads=2, pool_size=3).to(dtype)
    out = m(torch.randn(2, 10, 9, 16, dtype=dtype))
    assert out.shape == (2, 10, 9, 16) and out.dtype == dtype
    assert not out.isnan().any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=10, heads=4), "dim must be divisible by heads, got dim=10, heads=4"),
        (dict(dim=8, heads=2, kernel_size=4), "kernel_size must be odd"),
        (
            dict(dim=8, heads=2, pool_size=(2, 0)),
            r"pool_size must be a positive integer or a pair of them \(ph, pw\), got pool_size=\(2, 0\)",
        ),
        (dict(dim=8, heads=2, block=0), "block must be a positive int, got block=0"),
    ],
)
def test_aggregated_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AggregatedAttention(**kwargs)


def test_aggregated_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C = dim = 8, got shape \(1, 4, 4, 6\)"):
        AggregatedAttention(8, 2)(torch.randn(1, 4, 4, 6))
