"""Papers 38, 56: the selective SSM (Mamba-2 form), chunked (SSD) vs token-by-token scan."""

import itertools

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.selective_ssm import SelectiveSSM, ssd, ssd_recurrent, ssd_state


def _explicit(x, dt, A, B, C):
    """y_t = Σ_{s≤t} exp(A Σ_{s<r≤t} Δ_r) (C_t·B_s) Δ_s x_s, the closed form summed term by term."""
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for s in range(t + 1):
            decay = torch.exp(A * dt[:, s + 1 : t + 1].sum(1))  # [B, H]
            cb = (C[:, t] * B[:, s]).sum(-1)  # [B]
            y[:, t] += (decay * cb[:, None] * dt[:, s])[..., None] * x[:, s]
    return y


def _inputs(T=12, H=2, P=3, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(2, T, H, generator=g, dtype=torch.float64)
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 3
    B, C = torch.randn(2, 2, T, N, generator=g, dtype=torch.float64).unbind(0)
    return x, dt, A, B, C


@pytest.mark.parametrize("chunk", [1, 5, 4, 64])  # token by token, ragged, exact chunks, longer than T
def test_ssd_chunks_and_recurrence_equal_explicit_sums(chunk):
    args = _inputs()
    want = _explicit(*args)
    torch.testing.assert_close(ssd(*args, chunk=chunk), want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ssd_recurrent(*args), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cuts", [(5,), (4, 8), (1, 2, 3, 11)])
def test_ssd_in_pieces_with_state_equals_one_scan(cuts):
    """Pieces entered with the state the one before left equal one scan, and the last state is h_T."""
    args = _inputs()
    bounds = [0, *cuts, args[0].shape[1]]
    state, ys = None, []
    for lo, hi in itertools.pairwise(bounds):
        x, dt, B, C = (args[i][:, lo:hi] for i in (0, 1, 3, 4))
        y, state = ssd_state(x, dt, args[2], B, C, chunk=3, state=state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), _explicit(*args), atol=1e-10, rtol=1e-10)
    x, dt, A, B, C = args
    lam = torch.exp(dt * A)  # [B, T, H] decays
    h = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=x.dtype)
    for t in range(x.shape[1]):
        h = lam[:, t, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None]
    torch.testing.assert_close(state, h, atol=1e-10, rtol=1e-10)


def test_ssd_with_unit_decay_and_no_gating_is_a_cumulative_sum():
    """Λ = exp(Δ A) = 1 (A = 0), Δ = 1, B = C = 1: h_t = h_{t−1} + x_t."""
    x = torch.randn(2, 10, 3, 2, dtype=torch.float64)
    ones = torch.ones(2, 10, 1, dtype=torch.float64)
    y = ssd(x, torch.ones(2, 10, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), ones, ones, chunk=4)
    torch.testing.assert_close(y, torch.cumsum(x, dim=1), atol=1e-12, rtol=0)


def test_ssd_stable_under_strong_decay():
    """Δ·A of −200 per token: exp of summed (not differenced) log decays, so no inf or nan."""
    x, dt, A, B, C = _inputs(T=9)
    y = ssd(x, dt * 100, A - 2, B, C, chunk=9)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ssd_recurrent(x, dt * 100, A - 2, B, C), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("block_elements", [1, 2 * 42 * 8, 1 << 20])  # blocks of one chunk, 2 chunks (11 = 8 + 3), all
def test_selective_ssm_token_blocks_equal_the_recurrence(block_elements):
    torch.manual_seed(2)
    m = SelectiveSSM(dim=8, heads=2, chunk=4, state=4).double()  # 2E + 2N + H = 42 values per token
    m.block_elements = block_elements
    with torch.no_grad():
        m.dt_bias.fill_(0.5)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(m.parallel(x), m.recurrent(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_selective_ssm_recurrent_equals_parallel_float64(chunk):
    torch.manual_seed(1)
    m = SelectiveSSM(dim=8, heads=2, chunk=chunk, state=4).double()
    with torch.no_grad():
        m.dt_bias.fill_(0.5)  # larger steps than the init, so the decays matter
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(m.parallel(x), m.recurrent(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_selective_ssm_is_causal(form):
    torch.manual_seed(3)
    m = SelectiveSSM(dim=8, heads=2, form=form, chunk=4)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=0, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_selective_ssm_gradcheck(form):
    torch.manual_seed(4)
    m = SelectiveSSM(dim=4, heads=2, form=form, chunk=2, state=2, expand=1).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_selective_ssm_registered():
    assert isinstance(mechanisms.get("selective_ssm", dim=8, heads=2, state=4), SelectiveSSM)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "fft"}, r"form must be one of \('parallel', 'recurrent'\), got form='fft'"),
        ({"dim": 8, "heads": 2, "state": 0}, r"state must be a positive int, got state=0"),
        ({"dim": 8, "heads": 2, "kernel": 1.5}, r"kernel must be a positive int, got kernel=1.5"),
    ],
)
def test_selective_ssm_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelectiveSSM(**kwargs)


def test_selective_ssm_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(1, 3, 6\)"):
        SelectiveSSM(dim=8, heads=2)(torch.randn(1, 3, 6))
