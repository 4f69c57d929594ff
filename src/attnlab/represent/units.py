"""Do two networks learn the same units? One-to-one matching, sparse prediction and spectral groups of units.

Paper: 66 (Convergent learning). Shapes: ``Cx``, ``Cy`` the widths of the two layers compared,
``N`` rows.

    >>> import torch
    >>> corr = torch.eye(3)[[2, 0, 1]]  # unit i of x is unit perm[i] of y
    >>> match_units(corr).pairs
    [2, 0, 1]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Match", "match_units", "permutation_null", "sparse_prediction", "spectral_groups"]


@dataclass
class Match:
    """A one-to-one matching: unit ``i`` of x goes with unit ``pairs[i]`` of y, at correlation ``scores[i]``."""

    pairs: list[int]
    scores: list[float]

    @property
    def mean(self) -> float:
        """The mean correlation of the matched units."""
        return float(np.mean(self.scores))


def _square_check(corr: Tensor) -> Tensor:
    if corr.dim() != 2:
        raise ValueError(f"corr must be a [Cx, Cy] correlation matrix, got shape {list(corr.shape)}")
    if corr.shape[0] > corr.shape[1]:
        raise ValueError(f"corr has more x units than y units ({list(corr.shape)}): pass corr.T to match every x unit")
    return corr


def match_units(corr: Tensor) -> Match:
    """The one-to-one matching of x's units to y's that maximises the summed correlation (Hungarian method, scipy).

    Args:
        corr: ``[Cx, Cy]`` correlations, ``Cx <= Cy``.
    """
    from scipy.optimize import linear_sum_assignment

    c = _square_check(corr).detach().double().cpu().numpy()
    rows, cols = linear_sum_assignment(c, maximize=True)
    return Match([int(j) for j in cols[np.argsort(rows)]], [float(c[i, j]) for i, j in sorted(zip(rows, cols, strict=True))])


def permutation_null(x: Tensor, y: Tensor, *, draws: int = 20, seed: int = 0) -> list[float]:
    """The matched mean correlation when y's rows are shuffled (the pairing of rows broken): what matching finds by chance.

    Args:
        x, y: rows ``[N, Cx]`` and ``[N, Cy]`` (the same inputs through both networks).
    """
    from attnlab.represent.similarity import CrossStats

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        s = CrossStats([(0, 1)])
        s.update([x, y[torch.randperm(y.shape[0], generator=g)]])
        out.append(match_units(s.correlation(0, 1)).mean)
    return out


def sparse_prediction(x: Tensor, y: Tensor, *, alpha: float = 0.01, test: float = 0.25, seed: int = 0) -> dict:
    """Predict each unit of y from x's units with an L1 (lasso) linear map: held-out R² and how many x units each uses.

    Args:
        x, y: rows ``[N, Cx]`` and ``[N, Cy]``, standardised inside.
        alpha: the L1 weight (scikit-learn's ``Lasso(alpha)``): larger, fewer x units per y unit.
        test: the fraction of rows held out for R².

    Returns:
        ``{"r2": [Cy], "units_used": [Cy], "mean_r2", "mean_units_used"}``.
    """
    from sklearn.linear_model import Lasso
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    xs, ys = x.detach().double().cpu().numpy(), y.detach().double().cpu().numpy()
    if xs.shape[0] != ys.shape[0] or xs.shape[0] < 8:
        raise ValueError(f"x and y must hold the same rows, at least 8: got {xs.shape[0]} and {ys.shape[0]}")
    xtr, xte, ytr, yte = train_test_split(xs, ys, test_size=test, random_state=seed)
    sx, sy = StandardScaler().fit(xtr), StandardScaler().fit(ytr)
    xtr, xte, ytr, yte = sx.transform(xtr), sx.transform(xte), sy.transform(ytr), sy.transform(yte)
    fit = Lasso(alpha=alpha, max_iter=5000).fit(xtr, ytr)
    coef = np.atleast_2d(fit.coef_)  # (Cy, Cx)
    resid = ((yte - fit.predict(xte).reshape(yte.shape)) ** 2).sum(0)
    total = ((yte - yte.mean(0)) ** 2).sum(0)
    r2 = np.where(total > 0, 1 - resid / np.where(total > 0, total, 1), 0.0)
    used = (np.abs(coef) > 1e-8).sum(1)
    return {"r2": r2.tolist(), "units_used": used.tolist(), "mean_r2": float(r2.mean()), "mean_units_used": float(used.mean())}


def spectral_groups(corr_xx: Tensor, corr_xy: Tensor, corr_yy: Tensor, groups: int, *, seed: int = 0) -> dict:
    """Spectral clustering of both networks' units together, on |correlation| as affinity: many-to-many groups.

    Args:
        corr_xx, corr_xy, corr_yy: ``[Cx, Cx]``, ``[Cx, Cy]``, ``[Cy, Cy]`` unit correlations.
        groups: how many groups.

    Returns:
        ``{"labels_x": [Cx], "labels_y": [Cy], "shared": fraction of groups holding units of both networks}``.
    """
    from sklearn.cluster import SpectralClustering

    cx, cy = corr_xx.shape[0], corr_yy.shape[0]
    if not 2 <= groups <= cx + cy:
        raise ValueError(f"groups must be between 2 and the {cx + cy} units, got {groups=}")
    aff = torch.cat([torch.cat([corr_xx, corr_xy], 1), torch.cat([corr_xy.T, corr_yy], 1)]).abs().double().cpu().numpy()
    with warnings.catch_warnings():  # units with no correlation across groups (an exact copy) leave the graph in pieces: expected
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(groups, affinity="precomputed", random_state=seed).fit_predict(aff)
    lx, ly = labels[:cx], labels[cx:]
    shared = len(set(lx.tolist()) & set(ly.tolist())) / len(set(labels.tolist()))
    return {"labels_x": lx.tolist(), "labels_y": ly.tolist(), "shared": float(shared)}
