"""Paper 67: MULTI-LANE token summarising, S learned selectors pool N tokens into S.

MULTI-LANE summarises the N patch tokens ``P [N, C]`` of an image with ``S`` learned selector
vectors ``S [S, C]`` (``S = 10`` in the paper):

    summary = softmax(S Pᵀ / (τ·sqrt(C))) P        [S, C]

Each selector is a query that takes a softmax-weighted mean of the tokens; the values are the
tokens themselves (no projections), so at low temperature ``τ`` a selector returns the token
with the largest dot product with it, unchanged. Later layers then attend over ``S + 1``
tokens instead of ``N + 1``: the paper's saving, N² -> (S+1)².

The pooling is one :func:`attnlab.core.attend` call with the selectors as queries, so probes
and edits see which tokens each selector reads. With ``heads > 1`` the channels are split
into heads and each head pools with its own softmax (``sqrt(C / heads)`` in the scale);
``heads = 1`` is the paper's formula. Cost O(S·N·C).
"""

from __future__ import annotations

import math
import numbers

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["TokenSummarizer"]


@register("summarize", paper="67", layout="[B, T, C] -> [B, S, C]", time="O(S·T)", memory="O(S·T)")
class TokenSummarizer(nn.Module):
    """Token summarising: ``S`` learned selectors pool the tokens with ``softmax(S Pᵀ / (τ·sqrt(C))) P``.

    Paper: 67 (MULTI-LANE), selectors summarise N tokens into S [S = 10].
    Shapes: ``x [B, N, C] -> [B, S, C]`` (the output has ``S`` tokens, not ``N``).

    Args:
        dim: token width ``C``.
        heads: number of heads; 1 is the paper's single softmax over ``C`` channels.
        selectors: number of selectors ``S``.
        temperature: ``τ`` divides the logits; ``τ -> 0`` makes each selector return its
            nearest token (largest dot product).
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = TokenSummarizer(dim=16, heads=1)
        >>> m(torch.randn(2, 49, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, heads: int, *, selectors: int = 10, temperature: float = 1.0, backend: str = "auto"):
        super().__init__()
        positive_ints(dim=dim, heads=heads, selectors=selectors)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive finite float, got temperature={temperature!r}")
        self.dim, self.heads, self.temperature, self.backend = dim, heads, float(temperature), backend
        self.selectors = nn.Parameter(torch.randn(selectors, dim))  # logits S·p / sqrt(C) start at unit scale
        self.site = Site(name="summarize", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        B, _, C = x.shape
        q = rearrange(self.selectors.to(x.dtype), "s (h d) -> 1 h s d", h=self.heads).expand(B, -1, -1, -1)  # [B, H, S, D]
        p = rearrange(x, "b n (h d) -> b h n d", h=self.heads)  # [B, H, N, D] keys and values are the tokens
        scale = 1.0 / (self.temperature * math.sqrt(C // self.heads))
        out = attend(q, p, p, scale=scale, backend=self.backend, site=self.site)  # [B, H, S, D]
        return rearrange(out, "b h s d -> b s (h d)")  # [B, S, C]
