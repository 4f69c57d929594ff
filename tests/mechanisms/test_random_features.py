"""Paper 1: random-feature attention, checked against loops and an independent ridge solve."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.random_features import RandomFeatureAttention


def _sphere(*shape, generator=None, dtype=torch.float32):
    x = torch.randn(*shape, generator=generator, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


def _tilde(x):
    """The paper's tokens with a constant coordinate, ``[x; 1]``."""
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def _reference(W, v, x0, X):
    """f(x0, X) = Σ_m (1/N) Σ_i relu(x0ᵀ W_m x_i) ⟨v_m, x_i⟩, one sequence and head at a time."""
    if W.shape[-1] == x0.shape[-1] + 1:
        x0, X = _tilde(x0), _tilde(X)
    out = torch.zeros(X.shape[0], dtype=torch.float64)
    for b in range(X.shape[0]):
        for m in range(W.shape[0]):
            for i in range(X.shape[1]):
                s = x0[b].double() @ W[m].double() @ X[b, i].double()
                out[b] += torch.relu(s) * (v[m].double() @ X[b, i].double()) / X.shape[1]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_random_features_forward_matches_loops(bias):
    torch.manual_seed(0)
    m = RandomFeatureAttention(4, 3, mean="identity", bias=bias)
    with torch.no_grad():
        m.v.normal_()
    x0, X = _sphere(5, 4), _sphere(5, 6, 4)
    torch.testing.assert_close(m(x0, X).double(), _reference(m.W, m.v, x0, X), atol=1e-5, rtol=1e-5)


def test_fit_equals_closed_form_ridge_solution():
    torch.manual_seed(1)
    n, N, d, M, lam = 40, 6, 4, 5, 0.03
    m = RandomFeatureAttention(d, M)
    x0, X = _sphere(n, d), _sphere(n, N, d)
    y = (torch.einsum("bd,bnd->bn", x0, X) ** 3).mean(-1)  # the paper's target (1/N) Σ ⟨x0, x_i⟩³
    m.fit(x0, X, y, ridge=lam)

    # Independent: build the feature matrix by loops over the tokens [x; 1], solve the normal
    # equations of (1/n)‖Φv − y‖² + λ‖v‖², i.e. (ΦᵀΦ + nλI) v = Φᵀy.
    t0, tX = _tilde(x0).double(), _tilde(X).double()
    Phi = torch.zeros(n, M, d + 1, dtype=torch.float64)
    for j in range(n):
        for h in range(M):
            for i in range(N):
                s = t0[j] @ m.W[h].double() @ tX[j, i]
                Phi[j, h] += torch.relu(s) * tX[j, i] / N
    Phi = Phi.reshape(n, M * (d + 1))
    v = torch.linalg.solve(Phi.T @ Phi + n * lam * torch.eye(M * (d + 1), dtype=torch.float64), Phi.T @ y.double())
    torch.testing.assert_close(m.v.detach().double().flatten(), v, atol=1e-5, rtol=1e-5)


def test_fit_dual_form_matches_primal_when_fewer_samples_than_features():
    torch.manual_seed(2)
    n, N, d, M, lam = 10, 4, 4, 6, 0.1  # n = 10 < M·(d + 1) = 30: the dual branch
    m = RandomFeatureAttention(d, M)
    x0, X, y = _sphere(n, d), _sphere(n, N, d), torch.randn(n)
    m.fit(x0, X, y, ridge=lam)
    Phi = m.features(x0, X).reshape(n, -1).double()
    v = torch.linalg.solve(Phi.T @ Phi + n * lam * torch.eye(Phi.shape[1], dtype=torch.float64), Phi.T @ y.double())
    torch.testing.assert_close(m.v.detach().double().flatten(), v, atol=1e-5, rtol=1e-5)


def test_without_bias_the_layer_is_odd_and_cannot_fit_the_even_target():
    torch.manual_seed(7)
    x0, X = _sphere(64, 8), _sphere(64, 16, 8)
    odd = RandomFeatureAttention(8, 16, bias=False)
    with torch.no_grad():
        odd.v.normal_()
    torch.testing.assert_close(odd(-x0, -X), -odd(x0, X))
    even = RandomFeatureAttention(8, 16)
    with torch.no_grad():
        even.v.normal_()
    assert not torch.allclose(even(-x0, -X), -even(x0, X))


@pytest.mark.parametrize("bias, fits", [(True, True), (False, False)])
def test_fit_learns_the_papers_target_only_with_the_constant_coordinate(bias, fits):
    """On the sphere, d = 8, N = 16: test MSE well below E[y²] with [x; 1], and no better than 0 without."""
    g = torch.Generator().manual_seed(8)
    x0, X = _sphere(3000, 8, generator=g), _sphere(3000, 16, 8, generator=g)
    y = (torch.einsum("bd,bnd->bn", x0, X) ** 3).mean(-1)
    torch.manual_seed(9)
    m = RandomFeatureAttention(8, 128, mean="identity", bias=bias).fit(x0[:2000], X[:2000], y[:2000], ridge=1e-3)
    with torch.no_grad():
        relative = float(((m(x0[2000:], X[2000:]) - y[2000:]) ** 2).mean() / (y[2000:] ** 2).mean())
    assert (relative < 0.7) if fits else (relative > 0.95)


def test_frozen_W_is_a_buffer_and_gets_no_gradient():
    torch.manual_seed(3)
    m = RandomFeatureAttention(4, 3)
    assert [n for n, _ in m.named_parameters()] == ["v"]
    assert "W" in dict(m.named_buffers()) and "W" in m.state_dict()
    assert not m.W.requires_grad
    m(_sphere(2, 4), _sphere(2, 5, 4)).sum().backward()
    assert m.W.grad is None and m.v.grad is not None


@pytest.mark.parametrize("mean", ["zero", "identity"])
def test_W_distribution_has_the_stated_mean_and_std(mean):
    torch.manual_seed(4)
    M, d, std = 4000, 3, 0.5
    W = RandomFeatureAttention(d, M, mean=mean, std=std).W  # [M, d + 1, d + 1], one draw per head
    expected = torch.zeros(d + 1, d + 1)
    if mean == "identity":
        expected[:d, :d] = torch.eye(d)  # W0 = diag(I_d, 0)
    tol = 5 * std / M**0.5  # 5 standard errors of a mean over M draws
    torch.testing.assert_close(W.mean(0), expected, atol=tol, rtol=0)
    torch.testing.assert_close((W - expected).std(0), torch.full((d + 1, d + 1), std), atol=0.05, rtol=0)


def test_gradcheck_wrt_values():
    torch.manual_seed(5)
    m = RandomFeatureAttention(3, 2, mean="identity").double()
    x0, X = _sphere(2, 3, dtype=torch.float64), _sphere(2, 4, 3, dtype=torch.float64)
    v = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)  # [M, d + 1]
    assert torch.autograd.gradcheck(lambda v: torch.func.functional_call(m, {"v": v}, (x0, X)), (v,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(dtype):
    torch.manual_seed(6)
    m = mechanisms.get("random_features", dim=8, heads=4).to(dtype)
    with torch.no_grad():
        m.v.normal_()
    out = m(torch.randn(3, 8, dtype=dtype), torch.randn(3, 5, 8, dtype=dtype))
    assert out.shape == (3,) and out.dtype == dtype and not out.isnan().any()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="mean must be one of"):
        RandomFeatureAttention(4, 2, mean="ones")
    with pytest.raises(ValueError, match="std must be positive"):
        RandomFeatureAttention(4, 2, std=0.0)
    with pytest.raises(ValueError, match="dim and heads must be positive"):
        RandomFeatureAttention(0, 2)
    m = RandomFeatureAttention(4, 2)
    with pytest.raises(ValueError, match="expected x0"):
        m(torch.randn(2, 4), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="ridge must be positive"):
        m.fit(torch.randn(2, 4), torch.randn(2, 5, 4), torch.randn(2), ridge=0.0)
    with pytest.raises(ValueError, match="y must be"):
        m.fit(torch.randn(2, 4), torch.randn(2, 5, 4), torch.randn(3), ridge=0.1)
