"""Paper 15: BiFormer bi-level routing attention, checked against explicit softmax references."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.biformer import BiLevelRoutingAttention
from attnlab.probes import Entropy

# (H, W, n_win): even regions, uneven (padded) regions, and a grid with regions of pure padding.
SIZES = [(6, 6, 3), (5, 7, 3), (5, 7, 4)]


def _region_of(H, W, S):
    """``[H*W]`` region index of every token (regions of ceil(H/S) x ceil(W/S) tokens)."""
    ry, rx = math.ceil(H / S), math.ceil(W / S)
    return torch.tensor([(y // ry) * S + x // rx for y in range(H) for x in range(W)])


def _qkv(m, x):
    return F.linear(x, m.qkv.weight, m.qkv.bias).flatten(1, 2).chunk(3, dim=-1)  # [B, T, C] each


def _softmax_attention(q, k, v, heads, scale, allowed=None):
    """Explicit multi-head softmax attention over [B, T, C] tokens; ``allowed`` is [B, T, T] bool."""
    B, T, C = q.shape
    qh, kh, vh = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # [B, h, T, d]
    s = qh @ kh.transpose(-1, -2) * scale  # [B, h, T, T]
    if allowed is not None:
        s = s.masked_fill(~allowed[:, None], float("-inf"))
    return (torch.softmax(s, dim=-1) @ vh).transpose(1, 2).reshape(B, T, C)


def _routes(q, k, region, S, topk):
    """Independent routing: region means by explicit token lists, then top-k affinity. [B, S², topk]."""
    qm = torch.stack([q[:, region == r].mean(1) if (region == r).any() else q.new_zeros(q.shape[0], q.shape[2]) for r in range(S * S)], 1)
    km = torch.stack([k[:, region == r].mean(1) if (region == r).any() else k.new_zeros(k.shape[0], k.shape[2]) for r in range(S * S)], 1)
    a = qm @ km.transpose(1, 2)  # [B, S², S²]
    empty = torch.tensor([not (region == r).any() for r in range(S * S)])
    return a.masked_fill(empty, float("-inf")).topk(topk, dim=-1).indices


@pytest.mark.parametrize("H, W, S", SIZES)
def test_biformer_all_regions_without_lce_equals_full_attention(H, W, S):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(16, 2, n_win=S, topk=None, lce_kernel=0)
    x = torch.randn(2, H, W, 16)
    q, k, v = _qkv(m, x)
    ref = F.linear(_softmax_attention(q, k, v, 2, 8**-0.5), m.proj.weight, m.proj.bias).view(2, H, W, 16)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slab", [None, 1, 3])  # regions per slab (None: all in one)
@pytest.mark.parametrize("H, W, S", SIZES)
@pytest.mark.parametrize("topk", [1, 2, "all but one"])
def test_biformer_topk_equals_full_attention_masked_to_routed_regions(H, W, S, topk, slab, monkeypatch):
    torch.manual_seed(1)
    topk = S * S - 1 if topk == "all but one" else topk
    m = BiLevelRoutingAttention(16, 2, n_win=S, topk=topk, lce_kernel=0)
    x = torch.randn(2, H, W, 16)
    if slab:
        w2 = (-(-H // S)) * (-(-W // S))  # tokens per region
        monkeypatch.setattr("attnlab.mechanisms.biformer.SLAB_KEYS", slab * 2 * topk * w2)
    q, k, v = _qkv(m, x)
    region = _region_of(H, W, S)
    routes = _routes(q, k, region, S, topk)  # [B, S², topk]
    allowed = (region.view(1, 1, -1, 1) == routes[:, region].unsqueeze(-2)).any(-1)  # [B, T, T]: key region routed from query region
    ref = F.linear(_softmax_attention(q, k, v, 2, 8**-0.5, allowed), m.proj.weight, m.proj.bias).view(2, H, W, 16)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H, W, S", SIZES)
def test_biformer_attention_mass_lies_only_on_routed_regions(H, W, S):
    torch.manual_seed(2)
    m = BiLevelRoutingAttention(16, 1, n_win=S, topk=2)
    q, k = torch.randn(2, 2, H, W, 16).unbind(0)
    region = _region_of(H, W, S)
    # Values are the one-hot region of each token: output channel r is the attention mass on region r.
    v = F.one_hot(region, 16).float().view(1, H, W, 16).expand(2, -1, -1, -1)
    mass = m.routed_attention(q, k, v).flatten(1, 2)[..., : S * S]  # [B, T, S²]
    routes = m.route(q, k)  # [B, S², 2]
    assert torch.equal(routes.sort(-1).values, _routes(q.flatten(1, 2), k.flatten(1, 2), region, S, 2).sort(-1).values)
    routed = F.one_hot(routes, S * S).sum(-2).bool()[:, region]  # [B, T, S²] regions routed from each query's region
    assert mass[~routed].abs().max() == 0
    torch.testing.assert_close(mass.sum(-1), torch.ones(2, H * W))
    real = torch.bincount(region, minlength=S * S) > 0
    assert (mass[routed & real] > 0).all()  # every routed region with tokens gets some mass


def test_biformer_routes_by_region_means_excluding_padding():
    # 3x3 tokens, S=2: regions of 4, 2, 2 and 1 real tokens. Region 0 keys are 1 (mean 1, sum 4),
    # the single token of region 3 has key 2: by the mean, region 3 is the closest to every query.
    m = BiLevelRoutingAttention(4, 1, n_win=2, topk=1)
    q = torch.zeros(1, 3, 3, 4)
    q[..., 0] = 1.0
    k = torch.zeros(1, 3, 3, 4)
    k[0, :2, :2, 0] = 1.0
    k[0, 2, 2, 0] = 2.0
    assert m.route(q, k).flatten().tolist() == [3, 3, 3, 3]


def test_biformer_lce_adds_depthwise_conv_of_values():
    torch.manual_seed(3)
    m = BiLevelRoutingAttention(16, 2, n_win=2, topk=None, lce_kernel=5)
    x = torch.randn(2, 6, 5, 16)
    q, k, v = _qkv(m, x)
    conv = F.conv2d(v.view(2, 6, 5, 16).permute(0, 3, 1, 2), m.lce.weight, m.lce.bias, padding=2, groups=16)  # [B, C, H, W]
    out = _softmax_attention(q, k, v, 2, 8**-0.5) + conv.permute(0, 2, 3, 1).flatten(1, 2)
    ref = F.linear(out, m.proj.weight, m.proj.bias).view(2, 6, 5, 16)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_biformer_probes_see_one_row_per_token():
    # Padded region slots are empty rows, so a probe counts exactly the image's tokens.
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        BiLevelRoutingAttention(16, 2, n_win=3, topk=2)(torch.randn(2, 5, 7, 16))
    assert ent.result()["biformer"]["rows"].tolist() == [2 * 5 * 7] * 2


@pytest.mark.parametrize("slab_keys", [2**14, 1])  # all regions in one slab, or one region per slab
def test_biformer_gradcheck(slab_keys, monkeypatch):
    torch.manual_seed(4)
    monkeypatch.setattr("attnlab.mechanisms.biformer.SLAB_KEYS", slab_keys)
    m = BiLevelRoutingAttention(4, 2, n_win=2, topk=2, lce_kernel=3, backend="reference").double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_biformer_shape_and_dtype(dtype):
    torch.manual_seed(5)
    m = mechanisms.get("biformer", dim=16, heads=2, n_win=3, topk=4).to(dtype)
    out = m(torch.randn(2, 7, 9, 16, dtype=dtype))
    assert out.shape == (2, 7, 9, 16) and out.dtype == dtype
    assert not out.isnan().any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=10, heads=4), "dim must be divisible by heads"),
        (dict(dim=8, heads=2, n_win=2, topk=5), r"topk must be None \(all regions\) or an integer in \[1, n_win\*\*2 = 4\]"),
        (dict(dim=8, heads=2, lce_kernel=4), "lce_kernel must be 0"),
        (dict(dim=8, heads=2, n_win=0), "n_win must be a positive int"),
        (dict(dim=8, heads=2, scale=-1.0), "scale must be a positive float"),
    ],
)
def test_biformer_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiLevelRoutingAttention(**kwargs)


def test_biformer_bad_input_shape_raises():
    m = BiLevelRoutingAttention(8, 2, n_win=2)
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C = dim = 8, got shape \(1, 8, 4, 4\)"):
        m(torch.randn(1, 8, 4, 4))
