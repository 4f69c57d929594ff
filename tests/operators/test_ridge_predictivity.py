"""Cross-validated ridge predictivity with a bootstrap test (paper 59)."""

import numpy as np
import pytest
import torch

from attnlab import operators
from attnlab.operators.ridge_predictivity import planted_sites, ridge_predictivity


def _auc(scores, labels):
    """Mann–Whitney AUC: the fraction of (planted, unplanted) pairs ranked right, ties counting half."""
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_planted_sites_recovered_with_auc_at_least_0_9():
    X, Y, planted = planted_sites(n=200, features=16, sites=40, planted=10, noise=1.5, seed=0)
    out = ridge_predictivity(X, Y, n_boot=500)
    assert _auc(out.r, planted) >= 0.9
    assert _auc(-out.p, planted) >= 0.9


def test_held_out_r_matches_closed_form_ridge_with_one_alpha():
    """With a single alpha, each fold's fit is β = (XᵀX + αI)⁻¹ Xᵀy on centred data (sklearn fits an intercept)."""
    X, Y, _ = planted_sites(n=60, features=5, sites=4, planted=2, seed=1)
    out = ridge_predictivity(X, Y, alphas=(3.0,), folds=3, n_boot=10, seed=7)
    from sklearn.model_selection import KFold

    Xn, Yn = X.double().numpy(), Y.double().numpy()
    pred = np.empty_like(Yn)
    for tr, te in KFold(3, shuffle=True, random_state=7).split(Xn):
        mx, my = Xn[tr].mean(0), Yn[tr].mean(0)
        A = Xn[tr] - mx
        beta = np.linalg.solve(A.T @ A + 3.0 * np.eye(5), A.T @ (Yn[tr] - my))
        pred[te] = (Xn[te] - mx) @ beta + my
    r = [np.corrcoef(pred[:, s], Yn[:, s])[0, 1] for s in range(4)]
    np.testing.assert_allclose(out.r.numpy(), r, rtol=1e-8)
    assert out.alpha.tolist() == [3.0, 3.0, 3.0]


def test_pure_noise_sites_are_mostly_not_significant():
    X, Y, _ = planted_sites(n=100, features=8, sites=50, planted=0, seed=2)
    out = ridge_predictivity(X, Y, n_boot=300)
    assert float((out.p < 0.05).double().mean()) < 0.2
    assert ((out.p > 0) & (out.p <= 1)).all()


def test_registered():
    assert operators.get("ridge_predictivity") is ridge_predictivity
    assert ridge_predictivity.paper == "59"


def test_bad_inputs_raise():
    X, Y, _ = planted_sites(n=20, features=3, sites=2, planted=1)
    with pytest.raises(ValueError, match="same N"):
        ridge_predictivity(X, Y[:10])
    with pytest.raises(ValueError, match="folds must be"):
        ridge_predictivity(X, Y, folds=11)
    with pytest.raises(ValueError, match="alphas must be"):
        ridge_predictivity(X, Y, alphas=(0.0,))
    with pytest.raises(ValueError, match="n_boot"):
        ridge_predictivity(X, Y, n_boot=0)
    with pytest.raises(ValueError, match="planted must be"):
        planted_sites(sites=3, planted=4)
    assert torch.is_tensor(X)
