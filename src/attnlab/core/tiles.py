"""Tile plans: which (query tile, key tile) pairs to compute, and how.

A plan lists, for every query tile, the key tiles that are not empty, and for the partial ones
their boolean mask. Empty tiles are never touched; full tiles skip the mask. Plans come from a
mask predicate (:func:`plan_mask`: the mask's own bounds first, then exact evaluation of the
tiles the bounds leave open) or from a dense boolean tensor (:func:`plan_dense`).

Plans of predicate masks are cached on the mask, so the layers of a model share one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.core.masks import EMPTY, FULL, PARTIAL, Mask, Order

__all__ = ["Row", "TilePlan", "plan_dense", "plan_mask"]

_CACHE_SIZE = 8  # plans kept per mask


@dataclass
class Row:
    """The work of one query tile.

    Attributes:
        k_tiles: ``[n]`` key tiles that are not empty.
        partial: ``[p]`` positions within ``k_tiles`` of the partial tiles.
        masks: ``[p, B', H', q_tile, k_tile]`` bool masks of those tiles (None if ``p == 0``).
    """

    k_tiles: Tensor
    partial: Tensor
    masks: Tensor | None


@dataclass
class TilePlan:
    """Tiles to compute for one (mask, lengths, tile sizes, batch, heads) combination."""

    order: Order
    rows: list[Row]
    lq: int
    lk: int
    chunk_cache: dict = field(default_factory=dict, repr=False)  # kernel's per-row chunking

    @property
    def q_tile(self) -> int:
        return self.order.q_tile

    @property
    def k_tile(self) -> int:
        return self.order.k_tile

    @property
    def n_k_tiles(self) -> int:
        return self.order.k_index.numel() // self.order.k_tile

    @property
    def natural(self) -> bool:
        """Tokens are in their own order (padding, if any, only at the end)."""
        return self.order.source is None

    def density(self) -> float:
        """Fraction of (query tile, key tile) pairs that are computed."""
        return sum(r.k_tiles.numel() for r in self.rows) / max(1, len(self.rows) * self.n_k_tiles)


def plan_mask(
    mask: Mask, lq: int, lk: int, *, q_tile: int, k_tile: int, grid_tile: int | None = None, batch: int, heads: int, device
) -> TilePlan:
    """The tile plan of a predicate mask (cached on the mask).

    ``q_tile``/``k_tile`` size the tiles in natural order; a mask that orders tokens on a grid
    makes boxes of about ``grid_tile`` tokens (default ``q_tile``).
    """
    grid_tile = grid_tile or q_tile
    key = (lq, lk, q_tile, k_tile, grid_tile, batch if mask.batched else 1, heads if mask.headed else 1, str(device))
    hit = mask._plans.get(key)
    if hit is not None:
        return hit
    mask.check_lengths(lq, lk)
    order = mask.token_order(lq, lk, grid_tile) or Order.natural(lq, lk, q_tile, k_tile)
    tq, tk = order.q_tile, order.k_tile
    nq, nk = order.q_index.numel() // tq, order.k_index.numel() // tk
    bounds = mask.tile_bounds(order)
    if bounds is None:
        bounds = torch.full((nq, nk), PARTIAL, dtype=torch.int8)
    b = torch.arange(key[5], device=device).view(-1, 1, 1, 1)
    h = torch.arange(key[6], device=device).view(1, -1, 1, 1)
    k_slots = order.k_index.to(device).view(nk, tk)
    rows = []
    for i in range(nq):
        q_slots = order.q_index[i * tq : (i + 1) * tq].to(device)
        open_ = torch.nonzero(bounds[i] == PARTIAL).flatten()
        states = bounds[i].clone()
        masks = None
        if open_.numel():
            kk = k_slots[open_].reshape(-1)  # [p * tk]
            ok = mask.fn(b, h, q_slots.clamp(min=0).view(1, 1, -1, 1), kk.clamp(min=0).view(1, 1, 1, -1))
            ok = ok & (q_slots >= 0).view(1, 1, -1, 1) & (kk >= 0).view(1, 1, 1, -1)
            ok = ok.expand(b.shape[0], h.shape[1], tq, kk.numel()).reshape(b.shape[0], h.shape[1], tq, -1, tk)
            any_, all_ = ok.any(4).any(2).flatten(0, 1).any(0), ok.all(4).all(2).flatten(0, 1).all(0)  # [p]
            states[open_] = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8).to(states.device)
            keep = any_ & ~all_
            masks = ok[:, :, :, keep.to(ok.device)].permute(3, 0, 1, 2, 4).contiguous()  # [p', B', H', tq, tk]
        rows.append(_row(states, masks, device))
    plan = TilePlan(order, rows, lq, lk)
    if len(mask._plans) >= _CACHE_SIZE:
        mask._plans.pop(next(iter(mask._plans)))
    mask._plans[key] = plan
    return plan


def _row(states: Tensor, partial_masks: Tensor | None, device) -> Row:
    """A row from its tile states; ``partial_masks`` are the masks of its PARTIAL tiles in order."""
    k_tiles = torch.nonzero(states != EMPTY).flatten()
    partial = torch.nonzero(states[k_tiles] == PARTIAL).flatten()
    if partial.numel() == 0:
        partial_masks = None
    return Row(k_tiles.to(device), partial.to(device), partial_masks)


def plan_dense(allowed: Tensor, *, q_tile: int, k_tile: int) -> TilePlan:
    """The tile plan of a dense boolean mask ``[B', H', lq, lk]`` in natural order."""
    bb, hh, lq, lk = allowed.shape
    order = Order.natural(lq, lk, q_tile, k_tile)
    nq, nk = order.q_index.numel() // q_tile, order.k_index.numel() // k_tile
    padded = F.pad(allowed, (0, nk * k_tile - lk, 0, nq * q_tile - lq), value=False)
    tiles = padded.view(bb, hh, nq, q_tile, nk, k_tile)
    any_ = tiles.any(5).any(3).any(1).any(0)  # [nq, nk]
    all_ = tiles.all(5).all(3).all(1).all(0)
    states = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8).cpu()
    rows = []
    for i in range(nq):
        part = torch.nonzero(states[i] == PARTIAL).flatten().to(allowed.device)
        masks = tiles[:, :, i][:, :, :, part].permute(3, 0, 1, 2, 4).contiguous() if part.numel() else None
        rows.append(_row(states[i], masks, allowed.device))
    return TilePlan(order, rows, lq, lk)
