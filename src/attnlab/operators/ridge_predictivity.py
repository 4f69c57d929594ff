"""Paper 59: cross-validated ridge predictivity of recording sites from model features, with a bootstrap test.

The encoding-model analysis of vision–language integration in the brain: a model's features
predict each recording site's response by ridge regression; the prediction is made out of fold
(K-fold cross-validation, the ridge penalty chosen inside each training fold by efficient
leave-one-out), and a site's predictivity is the Pearson ``r`` between its held-out predictions
and its responses. A site is significant when the bootstrap over stimuli (resampling the
(prediction, response) pairs with replacement) puts ``r ≤ 0`` in fewer than ``α`` of the resamples:

    ŷ_s = X β̂_s^{(−fold)},    r_s = corr(ŷ_s, y_s),    p_s = P_boot(r_s* ≤ 0).

:func:`planted_sites` makes data with a known answer: only the planted sites respond to the
features. scikit-learn does the ridge fits (imported when the function runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnlab.operators import register

__all__ = ["Predictivity", "planted_sites", "ridge_predictivity"]


@dataclass
class Predictivity:
    """Per-site outcome of :func:`ridge_predictivity`.

    Attributes:
        r: held-out Pearson correlation per site ``[S]``.
        p: one-sided bootstrap p-value of ``r > 0`` per site ``[S]``.
        alpha: the ridge penalty chosen in each fold ``[K]``.
    """

    r: Tensor
    p: Tensor
    alpha: Tensor


def _columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of matching columns, over axis -2 (works on stacked resamples)."""
    a = a - a.mean(-2, keepdims=True)
    b = b - b.mean(-2, keepdims=True)
    den = np.sqrt((a * a).sum(-2) * (b * b).sum(-2))
    return np.where(den > 0, (a * b).sum(-2) / np.where(den > 0, den, 1.0), 0.0)


@register("ridge_predictivity", paper="59")
def ridge_predictivity(
    features: Tensor,
    responses: Tensor,
    *,
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
) -> Predictivity:
    """Cross-validated ridge predictivity of every site, with a bootstrap p-value over stimuli.

    Paper: 59, Vision-language integration in the brain (encoding models of multimodal features).

    Args:
        features: model features per stimulus.
        responses: recorded responses per stimulus and site.
        alphas: ridge penalties to choose from, per training fold, by leave-one-out.
        folds: cross-validation folds ``K`` (shuffled with ``seed``).
        n_boot: bootstrap resamples of the stimuli.
        seed: seed of the fold split and the bootstrap.

    Shapes:
        features ``[N, F]``, responses ``[N, S]`` → :class:`Predictivity` with r, p ``[S]``.

    Example:
        >>> X, Y, planted = planted_sites(n=120, features=8, sites=6, planted=3)
        >>> out = ridge_predictivity(X, Y, n_boot=200)
        >>> out.r.shape, bool((out.p[planted] < 0.05).all())
        (torch.Size([6]), True)
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    if features.dim() != 2 or responses.dim() != 2 or features.shape[0] != responses.shape[0]:
        raise ValueError(
            f"features must be [N, F] and responses [N, S] with the same N, got {tuple(features.shape)} and {tuple(responses.shape)}"
        )
    N = features.shape[0]
    if not isinstance(folds, int) or not 2 <= folds <= N // 2:
        raise ValueError(f"folds must be an integer in [2, N/2] so each training fold can pick alpha, got folds={folds!r} with N={N}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got n_boot={n_boot!r}")
    if len(alphas) == 0 or min(alphas) <= 0:
        raise ValueError(f"alphas must be a non-empty list of positive penalties, got alphas={alphas!r}")
    X = features.detach().double().cpu().numpy()  # (N, F)
    Y = responses.detach().double().cpu().numpy()  # (N, S)
    pred = np.empty_like(Y)  # (N, S) out-of-fold predictions
    chosen = []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        model = RidgeCV(alphas=np.asarray(alphas, dtype=float)).fit(X[train], Y[train])
        pred[test] = model.predict(X[test])
        chosen.append(float(model.alpha_))
    r = _columnwise_r(pred, Y)  # (S,)
    idx = np.random.default_rng(seed).integers(0, N, size=(n_boot, N))  # (n_boot, N)
    r_boot = _columnwise_r(pred[idx], Y[idx])  # (n_boot, S)
    p = (1 + (r_boot <= 0).sum(0)) / (n_boot + 1)  # (S,)
    return Predictivity(r=torch.from_numpy(r), p=torch.from_numpy(p), alpha=torch.tensor(chosen, dtype=torch.float64))


def planted_sites(
    n: int = 200, features: int = 16, sites: int = 40, planted: int = 10, noise: float = 1.0, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Stimuli whose features drive only the planted sites; the others are noise.

    A planted site responds ``y_s = X w_s + noise·ε`` with ``w_s ~ N(0, I/F)`` (signal variance ≈ 1,
    so ``noise=1`` gives an SNR of 1); every other site is ``noise·ε`` alone.

    Shapes:
        → features ``[n, features]``, responses ``[n, sites]``, planted ``[sites]`` (bool).
    """
    if not 0 <= planted <= sites:
        raise ValueError(f"planted must be between 0 and sites={sites}, got planted={planted}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g)  # (n, F)
    W = torch.randn(features, sites, generator=g) / features**0.5  # (F, S)
    mask = torch.zeros(sites, dtype=torch.bool)
    mask[torch.randperm(sites, generator=g)[:planted]] = True
    Y = X @ (W * mask) + noise * torch.randn(n, sites, generator=g)  # (n, S)
    return X, Y, mask
