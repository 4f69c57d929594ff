"""Paper 52 (ViT attention visual analytics): head importance, and attention strength by offset.

Head importance, two ways, both over the same batches and a score that runs the model on one:

- by pruning (:func:`pruning_importance`): ``score(batch)`` unedited minus with head ``h`` of layer
  ``l`` zeroed (its ``attn.z`` slice), averaged over batches: ``[L, H]``;
- by gradient (:func:`gradient_importance`), Michel et al. (2019), which paper 52 uses: a gate
  ``ξ_{l,h} = 1`` multiplies each head's output, and ``I_{l,h} = mean_batches |∂score/∂ξ_{l,h}|``.
  ``∂score/∂ξ`` is the first-order estimate of the pruning drop, so the two agree where the
  score is linear in the head's output.

Attention by offset (:class:`AttentionOffset`, a probe): the mean attention weight a query gives
a key at offset ``|q − k|`` (tokens), or ``(|Δrow|, |Δcol|)`` on a patch grid, and each head's
mean attention distance ``Σ p · dist / Σ p``, accumulated chunk by chunk.

Shapes: ``L`` layers, ``H`` heads, ``B`` batch, ``Tc`` query rows of a chunk, ``Ts`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.core.site import AttentionChunk, Probe, Site, site_matcher
from attnlab.models.graph import capture, intervene

__all__ = ["AttentionOffset", "gradient_importance", "pruning_importance"]

Score = Callable[[Any], Tensor]


def _heads(model: nn.Module, score: Score, batch) -> tuple[int, int, float]:
    """``(L, H, score)`` from an unedited pass over ``batch`` that captures every ``attn.z``."""
    with torch.no_grad(), capture(model, "layers.*.attn.z") as cache:
        base = float(score(batch))
    zs = [cache[f"layers.{i}.attn.z"] for i in range(len(cache))]  # [B, T, H, D] each
    return len(zs), zs[0].shape[2], base


def pruning_importance(model: nn.Module, score: Score, batches: Iterable) -> Tensor:
    """Each head's importance as the drop of ``score`` when it is pruned (output zeroed): ``[L, H]``.

    Paper: 52 (ViT attention visual analytics: head importance by pruning).

    Args:
        model: a model with a hook graph whose layers have ``layers.{i}.attn.z``.
        score: ``score(batch)`` runs the model on a batch and returns a scalar (an accuracy, a
            log-probability; higher is better, so a positive drop means the head helps).
        batches: the batches to average over.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("pruning_importance needs at least one batch")
    out = None
    for batch in batches:
        L, H, base = _heads(model, score, batch)
        drop = torch.zeros(L, H)
        for layer in range(L):
            for h in range(H):
                with torch.no_grad(), intervene(model, {f"layers.{layer}.attn.z": _zero(h)}):
                    drop[layer, h] = base - float(score(batch))
        out = drop if out is None else out + drop
    return out / len(batches)


def _zero(h: int) -> Callable[[Tensor, str], Tensor]:
    return lambda z, point: z.index_fill(2, torch.tensor([h], device=z.device), 0.0)  # z [B, T, H, D]


def gradient_importance(model: nn.Module, score: Score, batches: Iterable) -> Tensor:
    """Each head's importance as ``mean_batches |∂score/∂ξ|`` for a gate ``ξ = 1`` on its output: ``[L, H]``.

    Paper: 52 (ViT attention visual analytics: gradient head importance, after Michel et al. 2019).
    Arguments as :func:`pruning_importance`; ``score`` is differentiated (gradients on).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("gradient_importance needs at least one batch")
    L, H, _ = _heads(model, score, batches[0])
    total = torch.zeros(L, H)
    for batch in batches:
        gate = torch.ones(L, H, requires_grad=True)

        with torch.enable_grad(), intervene(model, {"layers.*.attn.z": _gated(gate)}):
            (g,) = torch.autograd.grad(score(batch), gate)
        total += g.abs()
    return total / len(batches)


def _gated(gate: Tensor) -> Callable[[Tensor, str], Tensor]:
    """Multiply each head's output ``z [B, T, H, D]`` at ``layers.{l}.attn.z`` by ``gate[l] [H]``."""

    def fn(z: Tensor, point: str) -> Tensor:
        layer = int(point.split(".")[1])
        return z * gate[layer].to(z.device, z.dtype)[None, None, :, None]

    return fn


class AttentionOffset(Probe):
    """Mean attention weight by query–key offset, and mean attention distance, per head.

    Paper: 52 (ViT attention visual analytics: attention strength vs spatial offset; mean attention distance).
    Shapes: per site, ``profile [H, K]`` (1-D: ``K`` offsets ``0 .. Tk−1``) or ``[H, rows, cols]``
    (grid: offset ``(|Δrow|, |Δcol|)``), ``distance [H]``.

    Args:
        grid: ``(rows, cols)`` of a patch grid, or None for a token sequence.
        prefix: tokens before the grid (a ViT's class token), left out of a grid's statistics.
        sites: site selection.

    ``profile[h, d]`` is the mean of ``p[q, k]`` over the visible pairs at offset ``d`` (batch
    included), NaN where no pair was seen; ``distance[h]`` is ``Σ p · dist / Σ p`` (tokens, or
    patch units on a grid).

    Example:
        >>> import attnlab
        >>> probe = AttentionOffset()
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[probe])
        >>> r = probe.result()["attend"]
        >>> r["profile"].shape, r["distance"].shape
        (torch.Size([2, 5]), torch.Size([2]))
    """

    def __init__(self, grid: tuple[int, int] | None = None, prefix: int = 0, sites=None):
        if grid is not None and (len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid)):
            raise ValueError(f"grid is (rows, cols) of the patch grid, two positive ints, got {grid=}")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"prefix is the number of tokens before the grid (e.g. 1 for a class token), got {prefix=}")
        self.grid, self.prefix = grid, prefix
        self._match = site_matcher(sites)
        self.mass: dict[str, Tensor] = {}  # site -> [H, K] Σ p per offset
        self.pairs: dict[str, Tensor] = {}  # site -> [H, K] visible pairs per offset
        self.dist: dict[str, Tensor] = {}  # site -> [H] Σ p·dist, Σ p  as [2, H]

    def _offsets(self, q_idx: Tensor, kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(offset index [Tc, Ts], distance [Tc, Ts], counted [Tc, Ts])`` for query and key positions."""
        if self.grid is None:
            off = (q_idx[:, None] - kv[None, :]).abs()  # [Tc, Ts]
            return off, off.double(), torch.ones_like(off, dtype=torch.bool)
        rows, cols = self.grid
        qp, kp = (q_idx - self.prefix).clamp_min(0), (kv - self.prefix).clamp_min(0)
        dy = (qp[:, None] // cols - kp[None, :] // cols).abs()  # [Tc, Ts]
        dx = (qp[:, None] % cols - kp[None, :] % cols).abs()
        counted = (q_idx[:, None] >= self.prefix) & (kv[None, :] >= self.prefix)
        counted &= (q_idx[:, None] < self.prefix + rows * cols) & (kv[None, :] < self.prefix + rows * cols)
        return dy * cols + dx, torch.sqrt((dy * dy + dx * dx).double()), counted

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self._match(site):
            return
        p = chunk.probs.double()  # [B, H, Tc, Ts]
        B, H, Tc, Ts = p.shape
        kv = torch.arange(chunk.kv_start, chunk.kv_start + Ts, device=p.device)
        off, dist, counted = self._offsets(chunk.q_idx.to(p.device), kv)
        visible = (chunk.visible & counted).expand(B, H, Tc, Ts).double()  # [B, H, Tc, Ts]
        K = chunk.lk if self.grid is None else self.grid[0] * self.grid[1]
        name = site.name
        if name not in self.mass or self.mass[name].shape[1] < K:  # a longer sequence: widen the offset axis
            grow = lambda t: torch.cat([t, t.new_zeros(H, K - t.shape[1])], 1) if t is not None else torch.zeros(H, K, dtype=torch.float64)  # noqa: E731
            self.mass[name], self.pairs[name] = grow(self.mass.get(name)), grow(self.pairs.get(name))
        idx = off.reshape(-1).to(self.mass[name].device)  # [Tc·Ts]
        self.mass[name].index_add_(1, idx, (p * visible).sum(0).reshape(H, -1).cpu())
        self.pairs[name].index_add_(1, idx, visible.sum(0).reshape(H, -1).cpu())
        pd = (p * visible * dist).sum((0, 2, 3)).cpu(), (p * visible).sum((0, 2, 3)).cpu()  # [H] each
        self.dist[name] = torch.stack(pd) + self.dist.get(name, 0)

    def result(self) -> dict[str, dict[str, Tensor]]:
        out = {}
        for name, mass in self.mass.items():
            pairs = self.pairs[name]
            profile = torch.where(pairs > 0, mass / pairs.clamp_min(1), math.nan).float()  # [H, K]
            if self.grid is not None:
                profile = profile.reshape(-1, *self.grid)  # [H, rows, cols]
            num, den = self.dist[name]
            out[name] = {"profile": profile, "distance": torch.where(den > 0, num / den.clamp_min(1e-300), math.nan).float()}
        return out
