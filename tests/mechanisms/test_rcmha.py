"""rcmha (paper 32): depthwise causal convolutions on q/k/v and relative position biases."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.mechanisms.rcmha import RelativeConvolutionalAttention

DIM, HEADS, T = 16, 4, 8


def _module(**options):
    torch.manual_seed(0)
    m = RelativeConvolutionalAttention(DIM, HEADS, **options)
    with torch.no_grad():
        m.relative_bias.normal_()
    return m


def _reference(m, x):
    """Convolutions as explicit sums over taps; scores + bias[h, min(i - j, max_distance)], loops over heads."""
    T_ = x.shape[1]

    def conv(y, c):  # y [B, T, W], c.weight [W, 1, k]: out_t = Σ_s w[s] y_{t - (k - 1) + s}
        k = c.weight.shape[-1]
        out = torch.zeros_like(y)
        for s in range(k):
            shift = k - 1 - s
            out[:, shift:] += c.weight[:, 0, s] * y[:, : T_ - shift]
        return out

    q = conv(x @ m.q_proj.weight.T, m.conv_q)
    k = conv(x @ m.k_proj.weight.T, m.conv_k)
    v = conv(x @ m.v_proj.weight.T, m.conv_v)
    D, G = m.head_dim, m.heads // m.kv_heads
    outs = []
    for h in range(m.heads):
        g = h // G
        s = q[..., h * D : (h + 1) * D] @ k[..., g * D : (g + 1) * D].transpose(1, 2) / math.sqrt(D)
        for i in range(T_):
            for j in range(T_):
                s[:, i, j] = s[:, i, j] + m.relative_bias[h, min(i - j, m.max_distance)] if j <= i else float("-inf")
        outs.append(torch.softmax(s, -1) @ v[..., g * D : (g + 1) * D])
    return torch.cat(outs, -1) @ m.o_proj.weight.T


@pytest.mark.parametrize(("kv_heads", "max_distance"), [(4, 128), (2, 3), (1, 0)])
def test_rcmha_equals_explicit_convolution_and_relative_bias(kv_heads, max_distance):
    m = _module(kv_heads=kv_heads, max_distance=max_distance)
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-5, rtol=1e-5)


def test_rcmha_identity_kernels_and_zero_bias_equal_causal_mha():
    m = RelativeConvolutionalAttention(DIM, HEADS, kv_heads=2)
    mha = MultiHeadAttention(DIM, HEADS, kv_heads=2, is_causal=True)
    m.load_state_dict(mha.state_dict(), strict=False)
    with torch.no_grad():
        for conv in (m.conv_q, m.conv_k, m.conv_v):
            conv.weight.zero_()
            conv.weight[..., -1] = 1.0  # the current token only
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(m(x), mha(x), atol=1e-6, rtol=1e-6)


def test_rcmha_future_inputs_get_exactly_zero_gradient():
    m = _module()
    x = torch.randn(1, T, DIM, requires_grad=True)
    for t in range(T):
        (grad,) = torch.autograd.grad(m(x)[0, t].sum(), x)
        assert torch.equal(grad[0, t + 1 :], torch.zeros_like(grad[0, t + 1 :]))
        assert (grad[0, : t + 1].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("s", [1, 3])
def test_rcmha_shifting_the_input_shifts_the_output(s):
    # s zero tokens in front, hidden from attention: their q/k/v are 0 like the convolution's own
    # padding, and every logit bias depends on i - j only, so the outputs after them are unchanged
    m = _module(max_distance=4)
    x = torch.randn(2, T, DIM)
    shifted = torch.cat([torch.zeros(2, s, DIM), x], dim=1)
    keep = (torch.arange(T + s) >= s).expand(T + s, T + s)  # keys before the shift are hidden
    torch.testing.assert_close(m(shifted, mask=keep)[:, s:], m(x), atol=1e-5, rtol=1e-5)


def test_rcmha_relative_bias_learns_per_distance():
    m = _module(max_distance=3)
    m(torch.randn(2, T, DIM)).square().sum().backward()
    assert (m.relative_bias.grad.abs() > 0).all()


def test_rcmha_gradcheck():
    torch.manual_seed(1)
    m = RelativeConvolutionalAttention(8, 2, kv_heads=1, max_distance=2, backend="reference")
    with torch.no_grad():
        m.relative_bias.normal_()
    m = m.double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rcmha_dtypes(dtype):
    m = _module().to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype))
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()


def test_rcmha_registered():
    assert isinstance(mechanisms.get("rcmha", dim=DIM, heads=HEADS, kernel_size=5), RelativeConvolutionalAttention)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kernel_size=0), "kernel_size must be an int >= 1, got kernel_size=0"),
        (dict(max_distance=-1), "max_distance must be an int >= 0, got max_distance=-1"),
        (dict(kv_heads=3), "heads must be a multiple of kv_heads"),
    ],
)
def test_rcmha_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        RelativeConvolutionalAttention(DIM, HEADS, **options)
