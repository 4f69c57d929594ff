"""Per-layer linear probes: L2 logistic regression with cross-validation, and a control task of shuffled labels.

Paper: 13 (Concept depth): a concept is decodable at a layer when a linear probe on that layer's
(last-token) states beats its control; harder concepts peak deeper. Shapes: ``N`` examples, ``C``
width, ``L`` streams (embeddings and each layer's output).

    >>> import torch
    >>> x = torch.randn(80, 4)
    >>> labels = (x[:, 0] > 0).long().tolist()
    >>> probe_layers([x], labels)[0]["accuracy"] > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["check_labels", "probe_layers"]


def check_labels(labels: Sequence, folds: int, what: str = "the dataset") -> None:
    """Refuse labels a cross-validated probe cannot use: one class, or a class with fewer examples than folds."""
    values, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
    if len(values) < 2:
        raise ValueError(f"{what} has one class ({str(values[0]) if len(values) else 'none'!r}): a probe needs at least two labels")
    if counts.min() < folds:
        rare = str(values[counts.argmin()])
        raise ValueError(f"{what}: label {rare!r} has {counts.min()} examples, fewer than the {folds} folds: add examples or lower folds")


def probe_layers(
    layers: Sequence[Tensor], labels: Sequence, *, folds: int = 5, control: bool = True, c: float = 1.0, seed: int = 0
) -> list[dict]:
    """Cross-validated accuracy of an L2 logistic-regression probe on each stream's rows.

    Args:
        layers: one ``[N, C]`` tensor per stream (the same ``N`` examples).
        labels: ``N`` class labels (any hashable values).
        folds: stratified folds.
        control: also probe shuffled labels (one fixed permutation): the accuracy a probe gets from
            memorising, which the real accuracy should beat (its selectivity).
        c: scikit-learn's inverse L2 strength.

    Returns:
        One row per stream: ``{"layer", "accuracy", "std", "control", "selectivity", "chance"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray([str(v) for v in labels])
    check_labels(y, folds)
    shuffled = np.random.default_rng(seed).permutation(y)
    chance = float(np.unique(y, return_counts=True)[1].max() / len(y))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # two classes: liblinear (the same L2 objective, ~15x faster than lbfgs on a few hundred examples of width 576)
    solver = {"solver": "liblinear"} if len(np.unique(y)) == 2 else {"max_iter": 2000}
    out = []
    for i, x in enumerate(layers):
        if x.shape[0] != len(y):
            raise ValueError(f"stream {i} has {x.shape[0]} rows, the labels {len(y)}: give one row per example")
        xs = x.detach().double().cpu().numpy()
        acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, **solver)), xs, y, cv=cv)
        ctrl = float("nan")
        if control:
            ctrl = float(cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, **solver)), xs, shuffled, cv=cv).mean())
        out.append(
            {
                "layer": i,
                "accuracy": float(acc.mean()),
                "std": float(acc.std()),
                "control": ctrl,
                "selectivity": float(acc.mean()) - ctrl,
                "chance": chance,
            }
        )
    return out
