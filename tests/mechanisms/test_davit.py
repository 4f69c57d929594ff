"""Paper 17: DaViT channel group attention, window attention and the dual block."""

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.davit import ChannelGroupAttention, DualAttention, WindowAttention
from attnlab.probes import Entropy


def _channel_reference(m, x):
    """DaViT's formula with einsums: A = softmax((K s)ᵀ V) per group, out = Q Aᵀ."""
    B, H, W, C = x.shape
    h, d = m.heads, C // m.heads
    q, k, v = F.linear(x.flatten(1, 2), m.qkv.weight, m.qkv.bias).view(B, H * W, 3, h, d).unbind(2)  # [B, T, h, d]
    a = torch.einsum("bthi,bthj->bhij", k * d**-0.5, v).softmax(dim=-1)  # [B, h, d, d]
    out = torch.einsum("bhij,bthj->bthi", a, q).reshape(B, H * W, C)
    return F.linear(out, m.proj.weight, m.proj.bias).view(B, H, W, C)


def _window_reference(m, x):
    """Full softmax attention over all tokens, masked to same-window pairs."""
    B, H, W, C = x.shape
    h, d, w = m.heads, C // m.heads, m.window
    q, k, v = F.linear(x.flatten(1, 2), m.qkv.weight, m.qkv.bias).view(B, H * W, 3, h, d).permute(2, 0, 3, 1, 4)  # [B, h, T, d]
    win = torch.tensor([(y // w) * 1000 + c // w for y in range(H) for c in range(W)])
    s = (q @ k.transpose(-1, -2) * d**-0.5).masked_fill(win[:, None] != win[None, :], float("-inf"))
    out = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, H * W, C)
    return F.linear(out, m.proj.weight, m.proj.bias).view(B, H, W, C)


@pytest.mark.parametrize("H, W, qkv_bias", [(4, 4, True), (5, 7, True), (5, 7, False)])
def test_channel_attention_equals_einsum_reference(H, W, qkv_bias):
    torch.manual_seed(0)
    m = ChannelGroupAttention(16, 4, qkv_bias=qkv_bias)
    x = torch.randn(2, H, W, 16)
    torch.testing.assert_close(m(x), _channel_reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, spread", [(torch.float32, 1.0), (torch.float64, 30.0)])  # 30: probabilities underflow
def test_channel_attention_matmul_path_equals_the_attend_path_with_gradients(dtype, spread):
    """Unobserved, the channel attention runs as matmuls; forced through ``attend`` it must agree."""
    torch.manual_seed(7)
    fast = ChannelGroupAttention(16, 4).to(dtype)
    slow = ChannelGroupAttention(16, 4, backend="sdpa").to(dtype)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 5, 16, dtype=dtype) * spread
    runs = []
    for m in (fast, slow):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.square().sum().backward()
        runs.append((out, xi.grad, m.qkv.weight.grad))
    for a, b in zip(*runs):
        assert a.isfinite().all()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_channel_attention_is_equivariant_to_token_permutation():
    torch.manual_seed(1)
    m = ChannelGroupAttention(16, 2)
    x = torch.randn(2, 5, 6, 16)
    perm = torch.randperm(30)
    shuffled = x.flatten(1, 2)[:, perm].view(2, 5, 6, 16)
    torch.testing.assert_close(m(shuffled).flatten(1, 2), m(x).flatten(1, 2)[:, perm], atol=1e-5, rtol=1e-5)


def test_window_attention_is_not_permutation_equivariant():
    # Contrast with channel attention: moving tokens across windows changes what they see.
    torch.manual_seed(1)
    m = WindowAttention(16, 2, window=2)
    x = torch.randn(1, 4, 4, 16)
    perm = torch.randperm(16)
    out = m(x.flatten(1, 2)[:, perm].view(1, 4, 4, 16)).flatten(1, 2)
    assert not torch.allclose(out, m(x).flatten(1, 2)[:, perm], atol=1e-3)


@pytest.mark.parametrize("H, W, window", [(6, 6, 3), (5, 7, 3), (4, 9, 4), (3, 3, 7)])
def test_window_attention_equals_masked_full_attention(H, W, window):
    torch.manual_seed(2)
    m = WindowAttention(16, 2, window=window)
    x = torch.randn(2, H, W, 16)
    torch.testing.assert_close(m(x), _window_reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("observed", [False, True])
def test_window_attention_gradients_equal_masked_full_attention(observed):
    """Slots past the edge hold copies of edge tokens: no gradient may flow through them."""
    torch.manual_seed(6)
    m, x = WindowAttention(16, 2, window=3), torch.randn(2, 5, 7, 16, requires_grad=True)
    g = torch.randn(2, 5, 7, 16)
    with attnlab.attach(probes=[Entropy()] if observed else []):
        ours = torch.autograd.grad((m(x) * g).sum(), [x, *m.parameters()])
    ref = torch.autograd.grad((_window_reference(m, x) * g).sum(), [x, *m.parameters()])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dual_attention_is_spatial_then_channel_with_residuals():
    torch.manual_seed(3)
    m = DualAttention(16, 2, window=3)
    x = torch.randn(2, 5, 4, 16)

    def cpe(conv, t):
        return t + F.conv2d(t.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=1, groups=16).permute(0, 2, 3, 1)

    y = cpe(m.cpe_spatial.conv, x)
    y = y + _window_reference(m.spatial, F.layer_norm(y, (16,), m.norm_spatial.weight, m.norm_spatial.bias))
    y = cpe(m.cpe_channel.conv, y)
    y = y + _channel_reference(m.channel, F.layer_norm(y, (16,), m.norm_channel.weight, m.norm_channel.bias))
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=1e-5)


def test_probes_see_the_channel_maps_and_the_windows():
    torch.manual_seed(4)
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        DualAttention(16, 2, window=3)(torch.randn(1, 5, 4, 16))
    res = ent.result()
    assert set(res) == {"davit.window", "davit.channel"}
    assert res["davit.channel"]["rows"].tolist() == [8, 8]  # one row per channel of each group: d = 8
    assert res["davit.window"]["rows"].tolist() == [5 * 4] * 2  # one row per token: padded window slots are empty rows


def test_window_attention_observed_or_not_gives_the_same_output():
    """Unobserved, padded queries attend (a bias on keys only) and are dropped; observed, they are empty rows."""
    torch.manual_seed(4)
    m, x = WindowAttention(16, 2, window=3), torch.randn(2, 5, 4, 16)
    with attnlab.attach(probes=[Entropy()]):
        observed = m(x)
    torch.testing.assert_close(m(x), observed, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "cls, backend",
    [
        (ChannelGroupAttention, "reference"),
        (ChannelGroupAttention, "auto"),
        (WindowAttention, "reference"),
        (WindowAttention, "auto"),
        (DualAttention, "reference"),
    ],
)
def test_davit_gradcheck(cls, backend):
    """``auto`` with nothing attached checks the channel attention's own backward (``_ChannelSoftmax``)."""
    torch.manual_seed(5)
    kwargs = {} if cls is ChannelGroupAttention else {"window": 2}
    m = cls(4, 2, backend=backend, **kwargs).double()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, fast_mode=cls is DualAttention)  # the block's parts are checked in full


@pytest.mark.parametrize("name", ["davit", "davit_channel", "davit_window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_davit_shape_and_dtype(name, dtype):
    torch.manual_seed(6)
    m = mechanisms.get(name, dim=16, heads=2).to(dtype)
    out = m(torch.randn(2, 9, 8, 16, dtype=dtype))
    assert out.shape == (2, 9, 8, 16) and out.dtype == dtype
    assert not out.isnan().any()


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ChannelGroupAttention, dict(dim=10, heads=4), "dim must be divisible by heads, got dim=10, heads=4"),
        (WindowAttention, dict(dim=8, heads=2, window=0), "window must be a positive int, got window=0"),
        (DualAttention, dict(dim=8, heads=0), "heads must be a positive int"),
    ],
)
def test_davit_bad_options_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_davit_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C = dim = 8, got shape \(1, 8, 4\)"):
        ChannelGroupAttention(8, 2)(torch.randn(1, 8, 4))
