"""context_aware (paper 27): queries and keys gated towards the global context."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.context_aware import ContextAwareAttention
from attnlab.mechanisms.mha import MultiHeadAttention

DIM, HEADS, T = 16, 4, 7


def _pair(**options):
    torch.manual_seed(0)
    ca = ContextAwareAttention(DIM, HEADS, **options)
    mha = MultiHeadAttention(DIM, HEADS, **options)
    ca.load_state_dict(mha.state_dict(), strict=False)
    return ca, mha


def _reference(m, x):
    """The paper's equations, literally, then softmax attention head by head."""
    B, T_, _ = x.shape
    Q, K, V = x @ m.q_proj.weight.T, x @ m.k_proj.weight.T, x @ m.v_proj.weight.T
    running = torch.stack([x[:, : t + 1].mean(1) for t in range(T_)], 1)  # mean of tokens 0..t
    C = running if m.is_causal else x.mean(1, keepdim=True).expand(B, T_, DIM)
    CU_Q, CU_K = C @ m.context_q.weight.T, C @ m.context_k.weight.T
    lam_Q = torch.sigmoid(Q @ m.gate_q.v_states.weight.T + CU_Q @ m.gate_q.v_context.weight.T)
    lam_K = torch.sigmoid(K @ m.gate_k.v_states.weight.T + CU_K @ m.gate_k.v_context.weight.T)
    Qh = (1 - lam_Q) * Q + lam_Q * CU_Q
    Kh = (1 - lam_K) * K + lam_K * CU_K
    D, G = m.head_dim, m.heads // m.kv_heads
    outs = []
    for h in range(m.heads):
        g = h // G
        s = Qh[..., h * D : (h + 1) * D] @ Kh[..., g * D : (g + 1) * D].transpose(1, 2) / math.sqrt(D)
        if m.is_causal:
            s = s.masked_fill(~torch.ones(T_, T_, dtype=torch.bool).tril(), float("-inf"))
        outs.append(torch.softmax(s, -1) @ V[..., g * D : (g + 1) * D])
    return torch.cat(outs, -1) @ m.o_proj.weight.T


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_context_aware_with_zero_gates_equals_vanilla_attention(causal, kv_heads):
    ca, mha = _pair(is_causal=causal, kv_heads=kv_heads)
    for gate in (ca.gate_q, ca.gate_k):  # force λ = 0 at both gates
        gate.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    x = torch.randn(2, T, DIM)
    assert torch.equal(ca(x), mha(x))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_context_aware_equals_the_papers_equations(causal, kv_heads):
    ca, mha = _pair(is_causal=causal, kv_heads=kv_heads)
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(ca(x), _reference(ca, x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ca(x), mha(x), atol=1e-3)


def test_context_aware_gate_one_replaces_queries_and_keys_by_the_context():
    # λ = 1: every query is C U_Q and every key C U_K, so every score in a row is equal: uniform attention
    ca, _ = _pair()
    for gate in (ca.gate_q, ca.gate_k):
        gate.register_forward_hook(lambda module, args, out: torch.ones_like(out))
    x = torch.randn(2, T, DIM)
    v = x @ ca.v_proj.weight.T
    want = v.mean(1, keepdim=True).expand_as(v) @ ca.o_proj.weight.T
    torch.testing.assert_close(ca(x), want, atol=1e-5, rtol=1e-5)


def test_context_aware_causal_output_ignores_the_future():
    ca, _ = _pair(is_causal=True, rope=True)
    x = torch.randn(1, T, DIM)
    y = x.clone()
    y[:, 4:] = torch.randn(1, T - 4, DIM)
    torch.testing.assert_close(ca(x)[:, :4], ca(y)[:, :4], atol=1e-6, rtol=1e-6)


def test_context_aware_bidirectional_context_sees_every_token():
    ca, _ = _pair()
    x = torch.randn(1, T, DIM, requires_grad=True)
    ca(x)[0, 0].sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).all()


def test_context_aware_gradcheck():
    torch.manual_seed(1)
    m = ContextAwareAttention(8, 2, kv_heads=1, is_causal=True, backend="reference").double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_context_aware_dtypes(dtype, causal):
    m = ContextAwareAttention(DIM, HEADS, is_causal=causal).to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype))
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()


def test_context_aware_registered():
    assert isinstance(mechanisms.get("context_aware", dim=DIM, heads=HEADS), ContextAwareAttention)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kv_heads=3), "heads must be a multiple of kv_heads, got heads=4, kv_heads=3"),
        (dict(rope_base=0), "rope_base must be a positive number"),
    ],
)
def test_context_aware_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        ContextAwareAttention(DIM, HEADS, **options)


def test_context_aware_bad_input_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 16\]"):
        ContextAwareAttention(DIM, HEADS)(torch.randn(T, DIM))
