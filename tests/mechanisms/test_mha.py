"""mha: the baseline multi-head attention, its ReLU attention (paper 68) and σReparam (paper 73)."""

import math

import pytest
import torch

from attnlab import attach, mechanisms
from attnlab.mechanisms.mha import MultiHeadAttention, SigmaReparamLinear, rotary
from attnlab.probes import Entropy

DIM, HEADS, T = 16, 4, 7


def _rope_complex(x, base=10000.0):
    """RoPE written with complex numbers: pair (j, j + D/2) is z_j, multiplied by e^{i t θ_j}."""
    D = x.shape[-1]
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2 :].double())
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    rot = torch.polar(torch.ones(x.shape[-2], D // 2, dtype=torch.float64), torch.arange(x.shape[-2])[:, None] * theta)
    z = z * rot
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def _einsum_mha(m, x, *, kind="softmax", mask=None):
    """Multi-head attention from the module's weights, written out with einsum."""
    B, T_, _ = x.shape
    H, Hkv, D = m.heads, m.kv_heads, m.head_dim
    q = torch.einsum("btc,oc->bto", x, m.q_proj.weight).view(B, T_, H, D)
    k = torch.einsum("btc,oc->bto", x, m.k_proj.weight).view(B, T_, Hkv, D)
    v = torch.einsum("btc,oc->bto", x, m.v_proj.weight).view(B, T_, Hkv, D)
    if m.rope:
        q = _rope_complex(q.transpose(1, 2)).transpose(1, 2)
        k = _rope_complex(k.transpose(1, 2)).transpose(1, 2)
    k = k.repeat_interleave(H // Hkv, dim=2)
    v = v.repeat_interleave(H // Hkv, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
    allowed = torch.ones(T_, T_, dtype=torch.bool)
    if m.is_causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask
    if kind == "softmax":
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    else:  # paper 68: ReLU(s) / number of visible keys
        p = torch.relu(s).masked_fill(~allowed, 0.0) / allowed.sum(-1, keepdim=True)
    out = torch.einsum("bhij,bjhd->bihd", p, v).reshape(B, T_, H * D)
    return torch.einsum("bto,co->btc", out, m.o_proj.weight)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_mha_equals_explicit_einsum_attention(kv_heads, causal, rope):
    torch.manual_seed(0)
    m = MultiHeadAttention(DIM, HEADS, kv_heads=kv_heads, is_causal=causal, rope=rope)
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(m(x), _einsum_mha(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "blocked"])
def test_mha_backends_give_the_same_layer(backend):
    torch.manual_seed(1)
    m = MultiHeadAttention(DIM, HEADS, kv_heads=2, is_causal=True, rope=True, backend=backend)
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(m(x), _einsum_mha(m, x), atol=1e-5, rtol=1e-5)


def test_mha_extra_mask_combines_with_causal():
    torch.manual_seed(2)
    m = MultiHeadAttention(DIM, HEADS, is_causal=True)
    x = torch.randn(1, T, DIM)
    keep = torch.rand(T, T) > 0.3
    keep.fill_diagonal_(True)
    torch.testing.assert_close(m(x, mask=keep), _einsum_mha(m, x, mask=keep), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(3)
    q = torch.randn(8).expand(1, 1, 6, 8)
    k = torch.randn(8).expand(1, 1, 6, 8)
    s = (rotary(q) @ rotary(k).transpose(-1, -2))[0, 0]  # [6, 6]
    for d in range(-5, 6):
        diag = torch.diagonal(s, d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.diagonal(s, 0)[0], torch.diagonal(s, 1)[0])


@pytest.mark.parametrize("causal", [False, True])
def test_relu_attention_equals_its_formula(causal):
    torch.manual_seed(4)
    m = MultiHeadAttention(DIM, HEADS, kv_heads=2, is_causal=causal, attention="relu")
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(m(x), _einsum_mha(m, x, kind="relu"), atol=1e-5, rtol=1e-5)


def test_relu_attention_divides_by_query_position_under_causal_mask():
    # one head, identity projections, all-positive scores: out_t = Σ_{j≤t} (q_t·k_j/√D) v_j / (t+1)
    m = MultiHeadAttention(2, 1, is_causal=True, attention="relu")
    for lin in (m.q_proj, m.k_proj, m.v_proj, m.o_proj):
        lin.weight.data = torch.eye(2)
    x = torch.rand(1, 5, 2) + 0.1
    s = x[0] @ x[0].T / math.sqrt(2)
    want = torch.stack([(s[t, : t + 1, None] * x[0, : t + 1]).sum(0) / (t + 1) for t in range(5)])
    torch.testing.assert_close(m(x)[0], want, atol=1e-6, rtol=1e-6)


def test_relu_attention_head_can_be_dormant_without_a_sink():
    # scores all negative: softmax must still spend its mass somewhere, ReLU attention outputs 0
    m = MultiHeadAttention(2, 1, is_causal=True, attention="relu")
    for lin in (m.k_proj, m.v_proj, m.o_proj):
        lin.weight.data = torch.eye(2)
    m.q_proj.weight.data = -torch.eye(2)
    x = torch.rand(1, 5, 2) + 0.1
    assert torch.equal(m(x), torch.zeros_like(x))


def test_sigma_reparam_layer_at_init_equals_plain_layer():
    torch.manual_seed(5)
    layer = SigmaReparamLinear(8, 6, bias=True).eval()
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(layer.gamma, torch.linalg.matrix_norm(layer.weight.detach(), 2), rtol=1e-5, atol=0)
    layer.train()  # a power step from the exact singular vectors changes σ only by rounding
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_sigma_reparam_mha_at_init_equals_plain_mha(training):
    torch.manual_seed(6)
    sr = MultiHeadAttention(DIM, HEADS, is_causal=True, sigma_reparam=True).train(training)
    plain = MultiHeadAttention(DIM, HEADS, is_causal=True)
    missing, unexpected = plain.load_state_dict(sr.state_dict(), strict=False)
    assert not missing and {k.rsplit(".", 1)[1] for k in unexpected} == {"u", "v", "gamma"}
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(sr(x), plain(x), atol=1e-5, rtol=1e-5)


def test_sigma_estimate_converges_to_spectral_norm_by_power_iteration():
    torch.manual_seed(7)
    layer = SigmaReparamLinear(8, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, 8))  # u, v now belong to the old weight
    true = torch.linalg.matrix_norm(layer.weight.detach(), 2)
    assert abs(layer.sigma().item() - true.item()) > 1e-2
    x = torch.randn(2, 8)
    for _ in range(100):
        layer(x)  # one power step per training forward
    torch.testing.assert_close(layer.sigma().detach(), true, rtol=1e-5, atol=0)
    # the effective weight's spectral norm is γ, whatever W's scale
    w_hat = (layer.gamma / layer.sigma() * layer.weight).detach()
    torch.testing.assert_close(torch.linalg.matrix_norm(w_hat, 2), layer.gamma.detach(), rtol=1e-5, atol=0)


def test_sigma_reparam_power_step_only_in_training():
    layer = SigmaReparamLinear(8, 6).eval()
    with torch.no_grad():
        layer.weight.mul_(torch.randn(6, 8))
    u = layer.u.clone()
    layer(torch.randn(2, 8))
    assert torch.equal(layer.u, u)
    layer.train()(torch.randn(2, 8))
    assert not torch.equal(layer.u, u)


def test_sigma_reparam_gradients_reach_gamma_and_weight():
    layer = SigmaReparamLinear(8, 6)
    layer(torch.randn(3, 8)).square().sum().backward()
    assert layer.gamma.grad is not None and layer.gamma.grad != 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", ["softmax", "relu"])
def test_mha_causal_output_ignores_the_future(attention):
    torch.manual_seed(8)
    m = MultiHeadAttention(DIM, HEADS, kv_heads=2, is_causal=True, rope=True, attention=attention)
    x = torch.randn(1, T, DIM)
    y = x.clone()
    y[:, 4:] = torch.randn(1, T - 4, DIM)
    torch.testing.assert_close(m(x)[:, :4], m(y)[:, :4], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(m(x)[:, 4:], m(y)[:, 4:])


@pytest.mark.parametrize(
    "options",
    [
        dict(kv_heads=2, is_causal=True, rope=True, backend="reference"),
        dict(attention="relu", is_causal=True),
        dict(sigma_reparam=True, bias=True, backend="reference"),
    ],
)
def test_mha_gradcheck(options):
    torch.manual_seed(9)
    m = MultiHeadAttention(8, 2, **options).double().eval()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [dict(), dict(kv_heads=1, is_causal=True, rope=True), dict(attention="relu"), dict(sigma_reparam=True)])
def test_mha_dtypes(dtype, options):
    m = MultiHeadAttention(DIM, HEADS, **options).to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype))
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()


def test_mha_softmax_goes_through_its_site():
    m = MultiHeadAttention(DIM, HEADS, is_causal=True)
    probe = Entropy()
    with attach(probes=[probe]):
        m(torch.randn(1, T, DIM))
    assert list(probe.result()) == ["mha"]
    assert probe.result()["mha"]["entropy"].shape == (HEADS,)


def test_mha_registered():
    assert isinstance(mechanisms.get("mha", dim=DIM, heads=HEADS, kv_heads=2), MultiHeadAttention)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(dim=10, heads=4), "dim must be divisible by heads, got dim=10, heads=4"),
        (dict(kv_heads=3), "heads must be a multiple of kv_heads, got heads=4, kv_heads=3"),
        (dict(attention="sigmoid"), r"attention must be one of \('softmax', 'relu'\), got attention='sigmoid'"),
        (dict(dim=12, heads=4, rope=True), "rope needs an even head dim"),
        (dict(heads=0), "heads must be a positive int"),
        (dict(rope_base=-1.0), "rope_base must be a positive number"),
        (dict(backend="sdp"), "unknown backend 'sdp'"),
    ],
)
def test_mha_bad_options_raise(options, message):
    kwargs = dict(dim=DIM, heads=HEADS) | options
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(kwargs.pop("dim"), kwargs.pop("heads"), **kwargs)


def test_mha_bad_input_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 16\], got \(2, 7, 8\)"):
        MultiHeadAttention(DIM, HEADS)(torch.randn(2, T, 8))
