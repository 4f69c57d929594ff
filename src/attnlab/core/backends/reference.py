"""The reference backend: explicit ``softmax(q kᵀ · scale + bias, masked) v``.

This is the ground truth every other backend, mechanism, probe and edit is tested against, so
it stays obviously correct rather than fast: it materialises the whole ``[B, H, Tq, Tk]``
matrix in float32. It also computes paper 68's ReLU attention (``normalizer="relu"``),
``ReLU(s) / n`` with ``n`` the number of keys each query may see, which no fused kernel has.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.backends.base import Inputs, compute_dtype, index_grids

__all__ = ["Reference", "reference_probs"]


def reference_probs(x: Inputs) -> Tensor:
    """Attention weights ``[B, H, Tq, Tk]`` (float32, float64 for float64 inputs); rows with no visible key are 0.

    Softmax probabilities, or with ``x.normalizer == "relu"`` paper 68's ``ReLU(s) / n``: ``n``
    counts the keys the query may see (mask, and a bias or logit edit that is not -inf).
    """
    B, H, Tq, _ = x.q.shape
    G = H // x.k.shape[1]
    dt = compute_dtype(x.q)
    k = x.k.to(dt).repeat_interleave(G, dim=1)  # [B, H, Tk, D]
    s = torch.matmul(x.q.to(dt), k.transpose(-1, -2)) * x.scale  # [B, H, Tq, Tk]
    if x.bias is not None:
        s = s + x.bias.to(dt)
    if x.score_mod is not None:
        s = x.score_mod(s, *index_grids(B, H, Tq, k.shape[2], s.device))
    allowed = x.allowed(dense=True)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    if x.normalizer == "relu":
        seen = ~torch.isneginf(s)  # [B, H, Tq, Tk] keys each query may see
        n = seen.sum(-1, keepdim=True).clamp(min=1)  # [B, H, Tq, 1]
        return torch.relu(s).masked_fill(~seen, 0.0) / n  # relu(-inf) = 0; a NaN logit stays NaN
    empty = torch.isneginf(s).all(-1, keepdim=True)  # [B, H, Tq, 1] rows with nothing to attend
    p = torch.softmax(s.masked_fill(empty, 0.0), dim=-1)
    return p.masked_fill(empty, 0.0)


class Reference:
    """Explicit softmax attention in float32 (float64 for float64 inputs); supports everything, forward and backward."""

    name = "reference"
    normalizers = ("softmax", "relu")

    def __call__(self, x: Inputs) -> Tensor:
        G = x.q.shape[1] // x.k.shape[1]
        v = x.v.to(compute_dtype(x.q)).repeat_interleave(G, dim=1)  # [B, H, Tk, Dv]
        return torch.matmul(reference_probs(x), v).to(x.q.dtype)  # [B, H, Tq, Dv]
