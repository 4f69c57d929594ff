"""Attribution patching: activation patching to first order, from one forward pass of each run and one backward pass.

Paper: 57 (Circuit analysis at scale), after Nanda's attribution patching. A unit's patched
metric is estimated as ``m(target) + Σ_unit (a_source − a_target) · ∂m/∂a |_target``; the
estimate is exact where the metric is linear in the activation. Results have the shape of
:func:`attnlab.circuits.patching.activation_patching`'s, and :func:`agreement` compares the two.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> from attnlab.circuits.pairs import induction_pairs
    >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
    >>> attribution_patching(model, induction_pairs(4, length=5, vocab_size=20), "layers.*.attn.z").grid.shape
    (2, 2)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from attnlab.circuits import metrics as M
from attnlab.circuits.pairs import Pairs
from attnlab.circuits.patching import DIRECTIONS, PatchResult, Progress, _grid, _index, _layer, units
from attnlab.models.graph import _resolve, capture, intervene

__all__ = ["agreement", "attribution_patching"]


def attribution_patching(
    model: nn.Module,
    pairs: Pairs,
    points: str | list[str] = "layers.*.attn.z",
    *,
    per: str = "head",
    heads: list[int] | None = None,
    positions: list[int] | None = None,
    direction: str = "denoise",
    metric: str | M.Metric = "logit_diff",
    batch_size: int = 8,
    progress: Progress | None = None,
) -> PatchResult:
    """Estimate every unit's patching score from gradients (arguments as :func:`~attnlab.circuits.patching.activation_patching`).

    The gradient ``∂m/∂a`` is taken at the target run (the corrupted one when denoising) through
    a zero added at each point, so it is the total derivative (through every later point too).
    """
    fn = M.resolve(metric)
    names = _resolve(model, points)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), got {direction!r}")
    if per in ("position", "head_position") and len(pairs.lengths()) > 1:
        raise ValueError(f"per={per!r} needs pairs of one token length, got lengths {pairs.lengths()}: use pairs of one template")
    last = M.last_only(metric)
    sums: dict[tuple[str, int, int], float] = {}
    source_sum = target_sum = 0.0
    batches = list(pairs.batches(batch_size))
    for b, (clean, corrupted, answer, wrong) in enumerate(batches):
        source_ids, target_ids = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
        with torch.no_grad(), capture(model, names) as source:
            source_sum += float(fn(M.logits_of(model, source_ids, last=last), answer, wrong).sum())
        target, zeros, add_zero = _zeros()
        with torch.enable_grad(), M.weights_frozen(model), intervene(model, dict.fromkeys(names, add_zero)):
            value = fn(M.logits_of(model, target_ids, last=last), answer, wrong).sum()
            grads = dict(zip(zeros, torch.autograd.grad(value, list(zeros.values()), allow_unused=True), strict=True))
        for p, g in grads.items():
            if g is None:
                raise ValueError(
                    f"no gradient reaches {p} on {type(model).__name__} (a point the model sums to itself): use attn.out or resid_post instead"
                )
        target_sum += float(value.detach())
        for k, p in enumerate(names):
            effect = (source[p] - target[p]) * grads[p]  # the activation's shape
            for h, t in units(p, tuple(effect.shape), per, heads, positions):
                sums[(p, h, t)] = sums.get((p, h, t), 0.0) + float(effect[_index(p, effect.dim(), h, t)].sum())
            if progress:
                progress(f"attribution {p}", b * len(names) + k + 1, len(batches) * len(names))
    n = len(pairs)
    clean_m, corrupted_m = (source_sum / n, target_sum / n) if direction == "denoise" else (target_sum / n, source_sum / n)
    base = target_sum / n
    rows = [
        {"point": p, "layer": _layer(p), "head": h, "position": t, "metric": base + s / n}
        | {"score": M.normalised(base + s / n, clean=clean_m, corrupted=corrupted_m)}
        for (p, h, t), s in sums.items()
    ]
    table = pd.DataFrame(rows, columns=["point", "layer", "head", "position", "metric", "score"])
    grid, grid_rows = _grid(table, per)
    return PatchResult(table, grid, grid_rows, clean_m, corrupted_m)


def _zeros():
    """``(activations, zeros, fn)``: ``fn`` keeps each activation and adds a zero that requires grad, so ``∂m/∂zero = ∂m/∂a``."""
    activations: dict[str, Tensor] = {}
    zeros: dict[str, Tensor] = {}

    def add_zero(x: Tensor, point: str) -> Tensor:
        activations[point] = x.detach()
        zeros[point] = torch.zeros_like(x, requires_grad=True)
        return x + zeros[point]

    return activations, zeros, add_zero


def agreement(estimate: PatchResult, exact: PatchResult, *, k: int = 10) -> dict[str, float]:
    """How well attribution patching's scores agree with activation patching's over the same units.

    Returns:
        ``{"pearson", "spearman", "top_k_overlap", "k", "units"}``: correlations of the scores,
        and the share of the ``k`` units with the largest ``|score|`` that both methods put there.
    """
    from scipy import stats

    keys = ["point", "layer", "head", "position"]
    both = estimate.table.merge(exact.table, on=keys, suffixes=("_est", "_exact"))
    if len(both) != len(exact.table) or len(both) < 2:
        raise ValueError(
            f"the results share {len(both)} of {len(exact.table)} units: run both methods on the same points, per, heads and positions"
        )
    a, b = both["score_est"].to_numpy(), both["score_exact"].to_numpy()
    k = min(k, len(both))
    top_a, top_b = set(np.argsort(-np.abs(a))[:k]), set(np.argsort(-np.abs(b))[:k])
    return {
        "pearson": float(stats.pearsonr(a, b)[0]),
        "spearman": float(stats.spearmanr(a, b)[0]),
        "top_k_overlap": len(top_a & top_b) / k,
        "k": k,
        "units": len(both),
    }
