"""selective (paper 51): Selective Attention's query and value temperatures."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.mechanisms.selective import SelectiveAttention

DIM, HEADS, T = 16, 4, 7


def _pair(**options):
    torch.manual_seed(0)
    sel = SelectiveAttention(DIM, HEADS, **options)
    mha = MultiHeadAttention(DIM, HEADS, kv_heads=options.get("kv_heads"), is_causal=options.get("is_causal", False))
    sel.load_state_dict(mha.state_dict(), strict=False)
    return sel, mha


def _randomise_temperatures(m):
    with torch.no_grad():
        m.alpha.normal_()
        for lin in (m.token_temperature, m.value_temperature):
            lin.weight.normal_(std=0.5)
            lin.bias.normal_()


def _reference(m, x):
    """Selective attention written out: softmax((τ_i q_i)·k_j/√D) (τ_v v_j), loops over heads."""
    B, T_, _ = x.shape
    D, G = m.head_dim, m.heads // m.kv_heads
    q = (x @ m.q_proj.weight.T).view(B, T_, m.heads, D)
    k = (x @ m.k_proj.weight.T).view(B, T_, m.kv_heads, D)
    v = (x @ m.v_proj.weight.T).view(B, T_, m.kv_heads, D)
    n = torch.arange(1, T_ + 1).float() if m.is_causal else torch.full((T_,), float(T_))
    outs = []
    for h in range(m.heads):
        tau = 1 + torch.sigmoid(m.alpha[h]) * torch.log(n)  # [T]
        tau = tau + torch.tanh(x @ m.token_temperature.weight[h] + m.token_temperature.bias[h])  # [B, T]
        vt = 1 + torch.tanh(x @ m.value_temperature.weight[h // G] + m.value_temperature.bias[h // G])  # [B, T]
        s = (tau[..., None] * q[:, :, h]) @ k[:, :, h // G].transpose(1, 2) / math.sqrt(D)  # [B, T, T]
        if m.is_causal:
            s = s.masked_fill(~torch.ones(T_, T_, dtype=torch.bool).tril(), float("-inf"))
        outs.append(torch.softmax(s, -1) @ (vt[..., None] * v[:, :, h // G]))
    return torch.cat(outs, -1) @ m.o_proj.weight.T


def test_selective_with_temperatures_off_equals_mha():
    sel, mha = _pair(position=False, token=False, value=False, is_causal=True)
    x = torch.randn(2, T, DIM)
    assert torch.equal(sel(x), mha(x))


def test_selective_with_unit_temperature_weights_equals_mha():
    # σ(-inf) = 0 and tanh(0) = 0: τ ≡ 1 exactly, ṽ = v exactly
    sel, mha = _pair(value=True, is_causal=True, kv_heads=2)
    with torch.no_grad():
        sel.alpha.fill_(-math.inf)
    x = torch.randn(2, T, DIM)
    assert torch.equal(sel(x), mha(x))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_selective_equals_written_out_formula(causal, kv_heads):
    sel, _ = _pair(value=True, is_causal=causal, kv_heads=kv_heads)
    _randomise_temperatures(sel)
    assert sel.value_temperature.weight.abs().sum() > 0 and sel.token_temperature.weight.abs().sum() > 0
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(sel(x), _reference(sel, x), atol=1e-5, rtol=1e-5)


def test_position_temperature_grows_with_log_of_visible_keys():
    sel = SelectiveAttention(DIM, HEADS, token=False, is_causal=True)
    tau = sel.query_temperature(torch.randn(1, T, DIM))[0, :, :, 0]  # [H, T]
    want = 1 + torch.sigmoid(torch.tensor(-4.5)) * torch.log(torch.arange(1.0, T + 1))
    torch.testing.assert_close(tau, want.expand(HEADS, T))
    bidirectional = SelectiveAttention(DIM, HEADS, token=False).query_temperature(torch.randn(1, T, DIM))
    torch.testing.assert_close(bidirectional, torch.full_like(bidirectional, want[-1].item()))


def test_selective_causal_output_ignores_the_future():
    sel, _ = _pair(value=True, is_causal=True)
    _randomise_temperatures(sel)
    x = torch.randn(1, T, DIM)
    y = x.clone()
    y[:, 4:] = torch.randn(1, T - 4, DIM)
    torch.testing.assert_close(sel(x)[:, :4], sel(y)[:, :4], atol=1e-6, rtol=1e-6)


def test_selective_gradcheck():
    torch.manual_seed(1)
    m = SelectiveAttention(8, 2, value=True, is_causal=True, rope=True, backend="reference")
    _randomise_temperatures(m)
    m = m.double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_selective_temperature_parameters_get_gradients():
    m = SelectiveAttention(DIM, HEADS, value=True, is_causal=True)
    m(torch.randn(2, T, DIM)).square().sum().backward()
    for p in (m.alpha, m.token_temperature.weight, m.value_temperature.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_dtypes(dtype):
    m = SelectiveAttention(DIM, HEADS, value=True, kv_heads=2, is_causal=True).to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype))
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()


def test_selective_registered():
    assert isinstance(mechanisms.get("selective", dim=DIM, heads=HEADS, value=True), SelectiveAttention)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(token=1), TypeError, "token must be True or False, got token=1"),
        (dict(kv_heads=3), ValueError, "heads must be a multiple of kv_heads"),
    ],
)
def test_selective_bad_options_raise(options, error, message):
    with pytest.raises(error, match=message):
        SelectiveAttention(DIM, HEADS, **options)
