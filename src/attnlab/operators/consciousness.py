"""Paper 8: the consciousness prior's attention bottleneck, a query that reads only its top-k elements.

Bengio's consciousness prior selects a few elements of a large unconscious state to form a
low-dimensional conscious state from which one variable is predicted. The selection is an
attention whose weights are kept only on the ``k`` highest scores (k ≈ 2, a handful of
elements) and renormalised over them:

    s_i = (W_q q) · (W_k x_i) / √D,    a = softmax over top-k(s),    c = Σ_{i ∈ top-k} a_i W_v x_i.

With ``k`` equal to the number of elements the bottleneck is plain single-query attention.
:func:`planted_parents` draws the check's data: each target variable depends on two of the
elements, and the trained bottleneck should pick exactly those two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["ConsciousnessBottleneck", "planted_parents"]


@register("consciousness_bottleneck", paper="8")
class ConsciousnessBottleneck(nn.Module):
    """Single-query attention over elements that keeps only the ``k`` largest scores.

    Paper: 8, The Consciousness Prior.

    Args:
        dim: width ``C`` of the elements and of the query.
        k: how many elements the conscious state reads (default 2).
        out_dim: width of the conscious state; default ``dim``.

    Shapes:
        x ``[B, N, C]`` elements, query ``[B, C]`` → (state ``[B, out_dim]``, weights ``[B, N]``,
        zero outside the top ``k``).

    Example:
        >>> m = ConsciousnessBottleneck(16, k=2)
        >>> state, w = m(torch.randn(3, 20, 16), torch.randn(3, 16))
        >>> state.shape, int((w > 0).sum(-1).max())
        (torch.Size([3, 16]), 2)
    """

    def __init__(self, dim: int, *, k: int = 2, out_dim: int | None = None):
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        for name, v in (("dim", dim), ("k", k), ("out_dim", out_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        self.dim, self.k = dim, k
        self.q = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, out_dim, bias=False)

    def scores(self, x: Tensor, query: Tensor) -> Tensor:
        """``s [B, N]``: every element's score for the query, before the top-k cut."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, N, C] with C={self.dim}, got shape {tuple(x.shape)}")
        if query.shape != (x.shape[0], self.dim):
            raise ValueError(f"query must be [B, C] = {(x.shape[0], self.dim)}, got shape {tuple(query.shape)}: one query per batch row")
        if self.k > x.shape[1]:
            raise ValueError(f"k={self.k} is more than the {x.shape[1]} elements: use k <= N")
        return torch.einsum("bc,bnc->bn", self.q(query), self.key(x)) / math.sqrt(self.dim)  # (B, N)

    def forward(self, x: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        s = self.scores(x, query)  # (B, N)
        top = s.topk(self.k, dim=-1).indices  # (B, k)
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True)
        w = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)  # (B, N), zero off the top k
        return torch.einsum("bn,bno->bo", w, self.value(x)), w


def planted_parents(n: int, *, variables: int = 20, targets: int = 8, generator: torch.Generator | None = None):
    """The check's data: ``variables`` i.i.d. N(0, 1) values; target ``j`` is ``x_a - x_b`` (``x_a + x_b`` for odd ``j``) of its two parents.

    The parents are drawn once from ``generator`` (distinct within a target); the same generator
    then draws ``n`` samples.

    Returns:
        values ``[n, variables]``, targets ``[n, targets]``, parents ``[targets, 2]`` (long).
    """
    if isinstance(variables, bool) or not isinstance(variables, int) or variables < 2:
        raise ValueError(f"variables must be an integer >= 2 (each target has two parents), got variables={variables!r}")
    parents = torch.stack([torch.randperm(variables, generator=generator)[:2] for _ in range(targets)])  # (targets, 2)
    x = torch.randn(n, variables, generator=generator)  # (n, variables)
    sign = torch.tensor([(-1.0) ** (j + 1) for j in range(targets)])  # -1, +1, -1, ...
    y = x[:, parents[:, 0]] + sign * x[:, parents[:, 1]]  # (n, targets)
    return x, y, parents
