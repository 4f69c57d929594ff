"""moh (paper 28): Mixture-of-Head attention."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.mechanisms.moh import MixtureOfHeads, load_balance_loss

DIM, HEADS, T = 16, 4, 6


def _moh_and_mha(**options):
    torch.manual_seed(0)
    moh = MixtureOfHeads(DIM, HEADS, **options)
    mha = MultiHeadAttention(DIM, HEADS, kv_heads=options.get("kv_heads"), is_causal=options.get("is_causal", False))
    missing, _ = moh.load_state_dict(mha.state_dict(), strict=False)
    assert all(k.split(".")[0] in ("router", "shared_router", "group_router") for k in missing)
    return moh, mha


@pytest.mark.parametrize("shared_heads", [0, 1, 2, 4])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_moh_unit_gates_with_every_head_active_equals_mha(shared_heads, kv_heads):
    moh, mha = _moh_and_mha(shared_heads=shared_heads, top_k=HEADS - shared_heads, kv_heads=kv_heads, is_causal=True, gates="unit")
    x = torch.randn(2, T, DIM)
    assert torch.equal(moh(x), mha(x))


def test_moh_output_is_gated_sum_of_head_outputs():
    # Σ_i g_i H_i W_O^i with H_i the heads of the same-weights MHA, W_O^i the columns of o_proj for head i
    moh, mha = _moh_and_mha(shared_heads=1, top_k=2)
    x = torch.randn(2, T, DIM)
    q, k, v = mha.project(x)
    heads = mha.attend_heads(q, k, v)  # [B, H, T, D]
    gates, _ = moh.route(x)  # [B, T, H]
    D = DIM // HEADS
    want = sum(gates[..., i, None] * (heads[:, i] @ mha.o_proj.weight[:, i * D : (i + 1) * D].T) for i in range(HEADS))
    torch.testing.assert_close(moh(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("heads", "shared", "top_k"), [(8, 2, 3), (8, 0, 2), (8, 4, 1), (6, 5, 1)])
def test_moh_active_head_fraction_is_exact(heads, shared, top_k):
    torch.manual_seed(1)
    m = MixtureOfHeads(24, heads, shared_heads=shared, top_k=top_k)
    gates, _ = m.route(torch.randn(3, 10, 24))
    active = (gates > 0).float().mean(-1)  # [B, T] fraction of heads on per token
    assert torch.equal(active, torch.full_like(active, (shared + top_k) / heads))
    assert (gates[..., :shared] > 0).all()  # shared heads are always on


def test_moh_gate_groups_follow_the_papers_normalisation():
    torch.manual_seed(2)
    m = MixtureOfHeads(DIM, 8, shared_heads=3, top_k=2)
    x = torch.randn(2, T, DIM)
    gates, _ = m.route(x)
    alpha = 2 * torch.softmax(m.group_router(x), -1)
    torch.testing.assert_close(gates[..., :3].sum(-1), 3 * alpha[..., 0])  # shared: softmax(W_s x)·h_s·α_1
    torch.testing.assert_close(gates[..., 3:].sum(-1), 2 * alpha[..., 1])  # routed: renormalised top-K ·K·α_2
    p = torch.softmax(m.router(x), -1)
    top = p.topk(2, -1)
    torch.testing.assert_close(gates[..., 3:].gather(-1, top.indices), top.values / top.values.sum(-1, keepdim=True) * 2 * alpha[..., 1:])


def test_load_balance_loss_on_hand_made_router_output():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]])
    collapsed = torch.tensor([[True, False, False, False], [True, False, False, False]])
    # f = [1, 0, 0, 0], P = [0.65, 0.15, 0.1, 0.1]: E · Σ f P = 4 · 0.65
    torch.testing.assert_close(load_balance_loss(probs, collapsed), torch.tensor(2.6))
    uniform = torch.full((4, 4), 0.25)
    spread = torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(load_balance_loss(uniform, spread), torch.tensor(1.0))  # = top_k under uniform routing


def test_moh_aux_loss_is_coefficient_times_balance_loss_of_its_router():
    torch.manual_seed(3)
    m = MixtureOfHeads(DIM, 8, shared_heads=2, top_k=3, aux_loss_coef=0.05)
    x = torch.randn(2, T, DIM)
    m(x)
    p = torch.softmax(m.router(x), -1).flatten(0, 1)  # [N, 6]
    sel = torch.zeros_like(p, dtype=torch.bool).scatter(-1, p.topk(3, -1).indices, True)
    f, P = sel.float().mean(0), p.mean(0)
    torch.testing.assert_close(m.aux_loss, 0.05 * 6 * (f * P).sum())
    m.aux_loss.backward()
    assert m.router.weight.grad.abs().sum() > 0


def test_moh_causal_output_ignores_the_future():
    torch.manual_seed(4)
    m = MixtureOfHeads(DIM, HEADS, shared_heads=1, top_k=2, is_causal=True, rope=True)
    x = torch.randn(1, T, DIM)
    y = x.clone()
    y[:, 3:] = torch.randn(1, T - 3, DIM)
    torch.testing.assert_close(m(x)[:, :3], m(y)[:, :3], atol=1e-6, rtol=1e-6)


def test_moh_gradcheck():
    torch.manual_seed(5)
    m = MixtureOfHeads(8, 4, shared_heads=2, top_k=1, is_causal=True, backend="reference").double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))  # top-K selection is piecewise constant: no tie at this input


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moh_dtypes(dtype):
    m = MixtureOfHeads(DIM, HEADS, shared_heads=1, top_k=2, is_causal=True).to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype))
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()
    assert not m.aux_loss.isnan()


def test_moh_defaults_activate_three_quarters_of_heads():
    m = mechanisms.get("moh", dim=32, heads=8)
    assert (m.shared, m.top_k) == (4, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(shared_heads=5), r"shared_heads must be an int in \[0, heads\], got shared_heads=5, heads=4"),
        (dict(shared_heads=1, top_k=4), r"top_k must be an int in \[1, heads - shared_heads\] = \[1, 3\]"),
        (dict(shared_heads=1, top_k=0), "top_k must be an int"),
        (dict(gates="ones"), r"gates must be one of \('learned', 'unit'\), got gates='ones'"),
        (dict(aux_loss_coef=-1), "aux_loss_coef must be a number >= 0"),
        (dict(kv_heads=3), "heads must be a multiple of kv_heads"),
    ],
)
def test_moh_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        MixtureOfHeads(DIM, HEADS, **options)
