"""Hypothesis strategies for attention inputs: shapes, dtypes and every kind of mask."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from attnlab.core import masks as M


@dataclass
class Case:
    """One random attention problem."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: object = None
    bias: torch.Tensor | None = None
    is_causal: bool = False

    def kwargs(self) -> dict:
        return {"mask": self.mask, "bias": self.bias, "is_causal": self.is_causal}

    def __repr__(self) -> str:
        m = self.mask if not isinstance(self.mask, torch.Tensor) else f"tensor{tuple(self.mask.shape)}:{self.mask.dtype}"
        b = None if self.bias is None else tuple(self.bias.shape)
        return f"Case(q={tuple(self.q.shape)}, k={tuple(self.k.shape)}, v={tuple(self.v.shape)}, dtype={self.q.dtype}, mask={m}, bias={b}, is_causal={self.is_causal})"


@st.composite
def grid_shapes(draw, max_tokens=300):
    nd = draw(st.integers(1, 3))
    shape = []
    for _ in range(nd):
        budget = max_tokens // max(1, math.prod(shape))
        shape.append(draw(st.integers(1, max(1, min(budget, 24 if nd > 1 else max_tokens)))))
    return tuple(shape)


@st.composite
def grid_masks(draw, shape):
    nd = len(shape)
    kind = draw(st.sampled_from(["neighborhood", "halo", "strided"]))
    if kind == "neighborhood":
        dil = tuple(draw(st.integers(1, max(1, n // 2))) for n in shape)
        ker = tuple(draw(st.integers(1, max(1, n // d))) for n, d in zip(shape, dil))
        caus = tuple(draw(st.booleans()) for _ in range(nd))
        return M.neighborhood(ker, dilation=dil, is_causal=caus, shape=shape)
    if kind == "halo":
        block = tuple(draw(st.sampled_from([b for b in range(1, n + 1) if n % b == 0])) for n in shape)
        halo = tuple(draw(st.integers(0, 3)) for _ in shape)
        return M.blocks_with_halo(block, halo, shape=shape)
    return M.strided_groups(tuple(draw(st.integers(1, n)) for n in shape), shape=shape)


@st.composite
def seq_masks(draw, lq, lk, batch):
    square = lq == lk
    kinds = ["causal", "full", "window", "prefix", "segments", "dense"]
    if square:
        kinds += ["modality", "isolation"]
    kind = draw(st.sampled_from(kinds))
    if kind == "causal":
        return M.causal
    if kind == "full":
        return M.full
    if kind == "window":
        return M.sliding_window(draw(st.integers(0, 40)), draw(st.integers(0, 40)))
    if kind == "prefix":
        return M.prefix_lm(draw(st.integers(0, lk)))
    if kind == "segments":
        per_batch = draw(st.booleans())
        n_ids = draw(st.integers(1, 4))
        shape = (batch, lq) if per_batch else (lq,)
        ids = torch.sort(torch.randint(0, n_ids, shape, generator=_gen(draw)), dim=-1).values
        kv = None if square else torch.sort(torch.randint(0, n_ids, (*shape[:-1], lk), generator=_gen(draw)), dim=-1).values
        return M.segments(ids, kv)
    if kind == "modality":
        types = torch.randint(0, 3, (lq,), generator=_gen(draw))
        return M.modality_mutual(types == 0, types == 1)
    if kind == "isolation":
        return M.isolation(torch.randint(0, 3, (lq,), generator=_gen(draw)))
    # a dense boolean tensor with some fully masked rows
    p = draw(st.sampled_from([0.05, 0.5, 0.95]))
    return torch.rand(batch if draw(st.booleans()) else 1, 1, lq, lk, generator=_gen(draw)) < p


def _gen(draw) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


@st.composite
def cases(draw, dtypes=(torch.float32,), max_len=300, allow_bias=True, grad=False):
    """A random attention problem whose answer the reference backend gives."""
    dtype = draw(st.sampled_from(dtypes))
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 3))
    H = Hkv * draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 4, 8, 16, 32]))
    Dv = draw(st.sampled_from([D, 8]))
    layout = draw(st.sampled_from(["seq", "square", "grid"]))
    if layout == "grid":
        shape = draw(grid_shapes(max_len))
        lq = lk = math.prod(shape)
        mask = draw(grid_masks(shape))
        if draw(st.booleans()):
            mask = mask & draw(seq_masks(lq, lk, B).filter(lambda m: isinstance(m, M.Mask)))
    else:
        lq = draw(st.integers(1, max_len))
        lk = lq if layout == "square" else draw(st.integers(1, max_len))
        mask = draw(st.none() | seq_masks(lq, lk, B))
        if isinstance(mask, M.Mask) and draw(st.integers(0, 3)) == 0:
            other = draw(seq_masks(lq, lk, B).filter(lambda m: isinstance(m, M.Mask)))
            mask = draw(st.sampled_from([mask & other, mask | other, ~mask]))
    g = _gen(draw)
    q = torch.randn(B, H, lq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, lk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, lk, Dv, generator=g).to(dtype)
    bias = None
    if allow_bias and draw(st.integers(0, 3)) == 0:
        shape = (draw(st.sampled_from([1, B])), draw(st.sampled_from([1, H])), draw(st.sampled_from([1, lq])), lk)
        bias = torch.randn(shape, generator=g)
        if draw(st.booleans()):  # -inf entries, and whole rows of them
            bias = bias.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and draw(st.booleans()):
            mask = bias.masked_fill(~mask, float("-inf"))  # a float mask: the bias is the mask
            bias = None
    is_causal = draw(st.booleans()) if mask is None or isinstance(mask, M.Mask) else False
    c = Case(q, k, v, mask, bias, is_causal)
    if grad:
        for t in (c.q, c.k, c.v):
            t.requires_grad_(True)
        if c.bias is not None and draw(st.booleans()):
            c.bias.requires_grad_(True)
    return c
