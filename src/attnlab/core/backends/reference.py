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

__all__ = ["Reference", "reference_probs", "weigh_values"]


def reference_probs(x: Inputs) -> Tensor:
    """Attention weights ``[B, H, Tq, Tk]`` (float32, float64 for float64 inputs); rows with no visible key are 0.

    Softmax probabilities, or with ``x.normalizer == "relu"`` paper 68's ``ReLU(s) / n``: ``n``
    counts the keys the query may see (mask, and a bias or logit edit that is not -inf).
    A NaN logit the query may see makes its row NaN; one it may not see is hidden like any other.
    """
    return _weights(x, _logits(x))


def _logits(x: Inputs) -> Tensor:
    """``q kᵀ · scale + bias``, edited, with -inf where the query may not see the key: ``[B, H, Tq, Tk]``."""
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
    if x.bias is not None:  # a -inf bias hides the key, also where the logit is NaN (NaN - inf = NaN)
        shown = ~torch.isneginf(x.bias)
        allowed = shown if allowed is None else allowed & shown
    return s if allowed is None else s.masked_fill(~allowed, float("-inf"))


def _weights(x: Inputs, s: Tensor) -> Tensor:
    if x.normalizer == "relu":
        seen = ~torch.isneginf(s)  # [B, H, Tq, Tk] keys each query may see
        n = seen.sum(-1, keepdim=True).clamp(min=1)  # [B, H, Tq, 1]
        return torch.relu(s).masked_fill(~seen, 0.0) / n  # relu(-inf) = 0; a NaN logit stays NaN
    empty = torch.isneginf(s).all(-1, keepdim=True)  # [B, H, Tq, 1] rows with nothing to attend
    p = torch.softmax(s.masked_fill(empty, 0.0), dim=-1)
    return p.masked_fill(empty, 0.0)


def weigh_values(p: Tensor, v: Tensor, seen: Tensor) -> Tensor:
    """``p @ v`` in which only the keys a query may see (``seen``, broadcastable to ``p``) reach it: ``[.., Tq, Dv]``.

    A weight of 0 times a NaN value is NaN, so a plain matmul would carry a value's NaN to
    queries that cannot see it. With NaN in ``v``, those values count as 0 and each query gets
    NaN in the columns where a value it may see is NaN. Without NaN: ``p @ v``.
    """
    nan = v.isnan()
    if not bool(nan.any()):
        return torch.matmul(p, v)
    out = torch.matmul(p, v.masked_fill(nan, 0.0))
    reached = torch.matmul(seen.expand(p.shape).to(v.dtype), nan.to(v.dtype)) > 0  # [.., Tq, Dv] a visible key's value is NaN
    return out.masked_fill(reached, float("nan"))


class Reference:
    """Explicit softmax attention in float32 (float64 for float64 inputs); supports everything, forward and backward."""

    name = "reference"
    normalizers = ("softmax", "relu")

    def __call__(self, x: Inputs) -> Tensor:
        G = x.q.shape[1] // x.k.shape[1]
        v = x.v.to(compute_dtype(x.q)).repeat_interleave(G, dim=1)  # [B, H, Tk, Dv]
        s = _logits(x)  # [B, H, Tq, Tk]
        return weigh_values(_weights(x, s), v, ~torch.isneginf(s)).to(x.q.dtype)  # [B, H, Tq, Dv]
