"""Activation patching: copy one activation from the other run and see how much of the answer comes back.

Paper: 5 (Circuit component reuse) and 57 (Circuit analysis at scale).

Denoising (``direction="denoise"``) runs the corrupted prompt with one unit (a layer's whole
activation, one head, one position) taken from the clean run; noising runs the clean prompt with
the unit from the corrupted run. Either way the score is the normalised metric
``(patched − corrupted) / (clean − corrupted)`` of the means over pairs: 1 = the clean answer,
0 = the corrupted one.

It streams: only the points being patched (and each block's output of the target run) are kept,
one batch of pairs at a time. A patched pass starts at the patched layer (:mod:`attnlab.circuits.resume`:
the layers below give the target run's output, which the patch cannot change), computes the
logits at the last position only when the metric is a built-in one, and patches up to
``units_per_pass`` units of one point side by side along the batch.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> from attnlab.circuits.pairs import induction_pairs
    >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
    >>> r = activation_patching(model, induction_pairs(4, length=5, vocab_size=20), "layers.*.attn.z", per="head")
    >>> r.grid.shape, list(r.table.columns)
    ((2, 2), ['point', 'layer', 'head', 'position', 'metric', 'score'])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from attnlab.circuits import metrics as M
from attnlab.circuits import resume as R
from attnlab.circuits.pairs import Pairs
from attnlab.models.graph import _resolve, capture, intervene

__all__ = ["PER", "PatchResult", "activation_patching", "axes", "patch", "patch_heads", "units"]

PER = ("layer", "head", "position", "head_position")
DIRECTIONS = ("denoise", "noise")
Progress = Callable[[str, int, int], None]


@dataclass
class PatchResult:
    """Scores of every patched unit.

    Attributes:
        table: one row per unit: ``point, layer, head, position, metric, score`` (head/position
            −1 where the unit spans them all; layer −1 for points outside the layers).
        grid: ``[L, H]`` for ``per="head"`` on ``attn.z`` (or ``q``/``k``/``v``), ``[points, T]``
            for ``per="position"``, ``[points, 1]`` for ``per="layer"``, ``[points, H, T]`` for
            ``per="head_position"``; rows in ``rows``.
        rows: the point each grid row belongs to.
        clean, corrupted: the mean metric of the unpatched runs.
    """

    table: pd.DataFrame
    grid: np.ndarray
    rows: list[str]
    clean: float
    corrupted: float


def axes(point: str) -> tuple[int | None, int | None]:
    """``(head axis, position axis)`` of a point's activation: ``attn.z [B, T, H, D]``, ``attn.q/k/v [B, H, T, D]``, residual points ``[B, T, C]``."""
    kind = point.rsplit(".", 1)[-1]
    if kind == "z":
        return 2, 1
    if kind in ("q", "k", "v"):
        return 1, 2
    if kind == "probs":
        raise ValueError(f"{point}: patch attention through attn.z (per head) or attn.q/k/v; attn.probs is not a patching point")
    return None, 1


def _layer(point: str) -> int:
    m = re.match(r"layers\.(\d+)\.", point)
    return int(m.group(1)) if m else -1


def units(point: str, shape: tuple[int, ...], per: str, heads: list[int] | None, positions: list[int] | None) -> list[tuple[int, int]]:
    """``(head, position)`` of every unit of ``point`` (−1 = all); unknown heads or positions raise, naming the valid ones."""
    if per not in PER:
        raise ValueError(f"per must be one of {', '.join(PER)}, got per={per!r}")
    h_ax, t_ax = axes(point)
    if per in ("head", "head_position") and h_ax is None:
        raise ValueError(f"{point} has no heads: per={per!r} needs layers.{{i}}.attn.z (or attn.q/k/v); use per='layer' or 'position'")
    n_h = shape[h_ax] if h_ax is not None else 0
    n_t = shape[t_ax]
    for h in heads or []:
        if not 0 <= h < n_h:
            raise ValueError(f"head {h} does not exist: {point} has heads 0..{n_h - 1}" if n_h else f"{point} has no heads: drop heads=")
    for t in positions or []:
        if not -n_t <= t < n_t:
            raise ValueError(f"position {t} does not exist: the prompts have positions 0..{n_t - 1}")
    hs = heads if heads is not None else list(range(n_h))
    ts = [t % n_t for t in positions] if positions is not None else list(range(n_t))
    if per == "layer":
        return [(-1, -1)]
    if per == "head":
        return [(h, -1) for h in hs]
    if per == "position":
        return [(-1, t) for t in ts]
    return [(h, t) for h in hs for t in ts]


def _index(point: str, ndim: int, head: int, position: int) -> tuple:
    """The slice of ``point``'s activation that a unit covers."""
    h_ax, t_ax = axes(point)
    idx = [slice(None)] * ndim
    if head >= 0:
        idx[h_ax] = head
    if position >= 0:
        idx[t_ax] = position
    return tuple(idx)


def patch(target: Tensor, source: Tensor, point: str, head: int = -1, position: int = -1) -> Tensor:
    """``target`` with one unit (head, position; −1 = all) copied from ``source`` (same shape)."""
    out = target.clone()
    i = _index(point, target.dim(), head, position)
    out[i] = source[i]
    return out


@torch.no_grad()
def activation_patching(
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
    units_per_pass: int = 4,
    progress: Progress | None = None,
) -> PatchResult:
    """Patch every unit of ``points`` from one run into the other and score it (module docstring).

    Args:
        model: a causal LM (Hugging Face or ``TinyTransformer``).
        pairs: prompt pairs (:mod:`attnlab.circuits.pairs`); ``per`` with positions needs one token length.
        points: hook point names or globs (docs: "Hook points").
        per: ``"layer"`` (the whole activation), ``"head"`` (one head, every position),
            ``"position"`` (one position, every head/channel) or ``"head_position"``.
        heads, positions: only these heads / positions (default all).
        direction: ``"denoise"`` (clean into corrupted) or ``"noise"`` (corrupted into clean).
        metric: ``"logit_diff"``, ``"answer_prob"`` or ``fn(logits, answer, wrong) -> [B]``.
        batch_size: pairs per forward pass.
        units_per_pass: units of one point patched side by side in one pass (``units_per_pass`` ×
            the pairs along the batch); 1 runs each unit alone.
        progress: called as ``progress(what, done, total)`` after each pass.

    Raises:
        ValueError: an unknown point, head or position (naming the valid ones); per-position
            patching over pairs of different token lengths; runs that score the same.
    """
    fn = M.resolve(metric)
    names = _resolve(model, points)
    if per in ("position", "head_position") and len(pairs.lengths()) > 1:
        raise ValueError(f"per={per!r} needs pairs of one token length, got lengths {pairs.lengths()}: use pairs of one template")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), got {direction!r}")
    if isinstance(units_per_pass, bool) or not isinstance(units_per_pass, int) or units_per_pass < 1:
        raise ValueError(f"units_per_pass must be a positive int (units patched side by side in one pass), got {units_per_pass!r}")
    last, skip = M.last_only(metric), R.can_resume()
    sums: dict[tuple[str, int, int], float] = {}
    clean_sum = corrupted_sum = 0.0
    batches = list(pairs.batches(batch_size))
    plan: list[tuple[str, int, int]] = []
    for b, (clean, corrupted, answer, wrong) in enumerate(batches):
        source_ids, target_ids = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
        with capture(model, names) as source:
            source_m = fn(M.logits_of(model, source_ids, last=last), answer, wrong)  # [B]
        with capture(model, names) as target, R.record(model) as outputs:
            target_m = fn(M.logits_of(model, target_ids, last=last), answer, wrong)  # [B]
        clean_m, corrupted_m = (source_m, target_m) if direction == "denoise" else (target_m, source_m)
        clean_sum, corrupted_sum = clean_sum + float(clean_m.sum()), corrupted_sum + float(corrupted_m.sum())
        plan = plan or [(p, h, t) for p in names for h, t in units(p, tuple(source[p].shape), per, heads, positions)]
        done = 0
        for group in _groups(plan, units_per_pass):
            p, k = group[0][0], len(group)
            new = torch.cat([patch(target[p], source[p], p, h, t) for _, h, t in group])  # [k·B, ...]: unit j in rows j·B ..
            start = R.resume(model, _layer(p), outputs, k) if skip else nullcontext()
            with start, intervene(model, {p: new}):
                logits = M.logits_of(model, target_ids.repeat(k, 1), last=last)  # [k·B, T or 1, V]
            values = fn(logits, answer.repeat(k), wrong.repeat(k)).view(k, -1).sum(1)  # [k]
            for unit, v in zip(group, values.tolist(), strict=True):
                sums[unit] = sums.get(unit, 0.0) + v
            done += k
            if progress:
                _, h, t = group[-1]
                what = f"patching {p}" + (f" head {h}" if h >= 0 else "") + (f" position {t}" if t >= 0 else "")
                progress(what, b * len(plan) + done, len(batches) * len(plan))
    n = len(pairs)
    clean_m, corrupted_m = clean_sum / n, corrupted_sum / n
    rows = [
        {
            "point": p,
            "layer": _layer(p),
            "head": h,
            "position": t,
            "metric": s / n,
            "score": M.normalised(s / n, clean=clean_m, corrupted=corrupted_m),
        }
        for (p, h, t), s in sums.items()
    ]
    table = pd.DataFrame(rows, columns=["point", "layer", "head", "position", "metric", "score"])
    grid, grid_rows = _grid(table, per)
    return PatchResult(table, grid, grid_rows, clean_m, corrupted_m)


def _groups(plan: list[tuple[str, int, int]], size: int) -> list[list[tuple[str, int, int]]]:
    """The units in runs of at most ``size`` that share a point, in plan order."""
    groups: list[list[tuple[str, int, int]]] = []
    for unit in plan:
        if groups and len(groups[-1]) < size and groups[-1][0][0] == unit[0]:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


@torch.no_grad()
def patch_heads(
    model: nn.Module,
    pairs: Pairs,
    heads: list,
    *,
    direction: str = "denoise",
    metric: str | M.Metric = "logit_diff",
    batch_size: int = 8,
) -> dict[str, float]:
    """Patch several heads' outputs (``attn.z``, every position) together: ``{"metric", "score", "clean", "corrupted"}`` (means over pairs).

    ``heads`` as in :func:`attnlab.circuits.path_patching` (``["L1H3", (0, 2)]``); the other
    arguments as :func:`activation_patching`. One head alone scores as its ``per="head"`` row.
    """
    from attnlab.circuits.path import _shape
    from attnlab.heads import parse_heads

    fn = M.resolve(metric)
    chosen = parse_heads(heads, *_shape(model))
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), got {direction!r}")
    names = sorted({f"layers.{layer}.attn.z" for layer, _ in chosen})
    last = M.last_only(metric)  # the built-in metrics read the last position: compute the logits there only
    sums = {"metric": 0.0, "clean": 0.0, "corrupted": 0.0}
    for clean, corrupted, answer, wrong in pairs.batches(batch_size):
        with capture(model, names) as clean_cache:
            sums["clean"] += float(fn(M.logits_of(model, clean, last=last), answer, wrong).sum())
        with capture(model, names) as corrupted_cache:
            sums["corrupted"] += float(fn(M.logits_of(model, corrupted, last=last), answer, wrong).sum())
        source, target, target_ids = (
            (clean_cache, corrupted_cache, corrupted) if direction == "denoise" else (corrupted_cache, clean_cache, clean)
        )
        edits = {p: target[p] for p in names}
        for layer, h in chosen:
            p = f"layers.{layer}.attn.z"
            edits[p] = patch(edits[p], source[p], p, h)  # [B, T, H, D]
        with intervene(model, edits):
            sums["metric"] += float(fn(M.logits_of(model, target_ids, last=last), answer, wrong).sum())
    out = {k: v / len(pairs) for k, v in sums.items()}
    return {**out, "score": M.normalised(out["metric"], clean=out["clean"], corrupted=out["corrupted"])}


def _grid(table: pd.DataFrame, per: str) -> tuple[np.ndarray, list[str]]:
    """The scores as ``[points, H]``, ``[points, T]``, ``[points, 1]`` or ``[points, H, T]`` (rows: the points in order)."""
    rows = list(dict.fromkeys(table["point"]))
    if per == "layer":
        return table["score"].to_numpy()[:, None], rows
    if per == "head_position":
        g = table.pivot_table(index="point", columns=["head", "position"], values="score", sort=False)
        H, T = table["head"].nunique(), table["position"].nunique()
        return g.loc[rows].to_numpy().reshape(len(rows), H, T), rows
    col = "head" if per == "head" else "position"
    g = table.pivot_table(index="point", columns=col, values="score", sort=False)
    return g.loc[rows].to_numpy(), rows
