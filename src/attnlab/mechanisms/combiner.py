"""Paper 63: Combiner-Fixed, full attention at sub-quadratic cost through segment summaries.

Combiner (Ren et al. 2021, "Combiner: Full Attention Transformer with Sparse Computation Cost")
reads attention as a conditional expectation and factorises it: a query attends directly to
the keys of its own segment, and indirectly to every other segment through one summary. The
Fixed variant cuts the sequence into segments of ``L`` tokens (``L ≈ sqrt(T)``). Query ``i`` in
segment ``g`` takes ONE softmax over

- the keys of segment ``g`` (``j <= i`` when causal), with logits ``q_i·k_j / sqrt(D)``, and
- one summary per earlier segment ``h < g`` (every other segment when not causal), with key
  and value the mean of the segment's keys and values: logit ``q_i·k̄_h / sqrt(D)``, value ``v̄_h``.

The summary's probability is spread uniformly over its segment's tokens (mean pooling), so
the implied ``T×T`` matrix (:meth:`Combiner.implied_attention`) is row-stochastic and every
earlier token gets non-zero weight: full attention, not sparse attention.

Segments are folded into the batch for :func:`attnlab.core.attend`: the site sees ``B·G`` rows
(``G`` segments) of ``L`` queries over ``L + G`` keys, the segment's own keys followed by the
``G`` summaries, with a mask. Cost O(T·(L + T/L)) = O(T·sqrt(T)) at ``L = sqrt(T)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core.backends import reference_probs
from attnlab.core.backends.base import Inputs
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["Combiner"]


@register("combiner", paper="63", time="O(T·sqrt(T))", memory="O(T·sqrt(T))")
class Combiner(nn.Module):
    """Combiner-Fixed: one softmax over the own segment's keys and mean-pooled summaries of the other segments.

    Paper: 63 (Combiner, Ren et al. 2021), the Fixed factorisation with mean-pooled summaries.
    Shapes: ``x [B, T, C] -> [B, T, C]``; ``G = ceil(T / L)`` segments of ``L`` tokens, the last one may be shorter.

    Args:
        dim: model width ``C``.
        heads: number of heads.
        segment: segment length ``L``; default ``ceil(sqrt(T))`` for each input.
        is_causal: summaries of earlier segments only, and causal attention inside the segment.
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = Combiner(dim=16, heads=2, segment=4)
        >>> m(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, heads: int, *, segment: int | None = None, is_causal: bool = True, backend: str = "auto"):
        super().__init__()
        positive_ints(dim=dim, heads=heads)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if segment is not None and (isinstance(segment, bool) or not isinstance(segment, int) or segment < 1):
            raise ValueError(f"segment must be a positive int or None (ceil(sqrt(T))), got segment={segment!r}")
        self.dim, self.heads, self.segment, self.is_causal, self.backend = dim, heads, segment, is_causal, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="combiner", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v, mask = self._segments(x)
        B, T, _ = x.shape
        out = attend(q, k, v, mask=mask, backend=self.backend, site=self.site)  # [B·G, H, L, D]
        out = rearrange(out, "(b g) h l d -> b (g l) (h d)", b=B)[:, :T]  # [B, T, C]
        return self.proj(out)

    def implied_attention(self, x: Tensor) -> Tensor:
        """The ``[B, H, T, T]`` attention matrix the output implies: ``out = proj(A @ v)``.

        A summary's probability is shared equally by the tokens of its segment. For small ``T``
        (it materialises ``T×T``); float32, or float64 for float64 input.
        """
        q, k, v, mask = self._segments(x)
        B, T, _ = x.shape
        L = q.shape[2]
        G = k.shape[2] - L
        p = reference_probs(Inputs(q, k, v, 1.0 / math.sqrt(q.shape[-1]), dense_mask=mask))  # [B·G, H, L, L + G]
        pos = torch.arange(G * L, device=x.device)
        seg = pos // L
        counts = torch.bincount(seg[pos < T], minlength=G).to(p.dtype)  # [G] real tokens per segment
        spread = (seg[None, :] == torch.arange(G, device=x.device)[:, None]) & (pos < T)  # [G, G·L] segment h -> its tokens
        a = p[..., L:] @ (spread.to(p.dtype) / counts[:, None])  # [B·G, H, L, G·L] summaries spread uniformly
        a = rearrange(a, "(b g) h l p -> b g h l p", b=B)  # [B, G, H, L, G·L]
        local = rearrange(p[..., :L], "(b g) h l j -> b g h l j", b=B)  # [B, G, H, L, L]
        for g in range(G):
            a[:, g, :, :, g * L : (g + 1) * L] += local[:, g]  # direct attention inside segment g
        return rearrange(a, "b g h l p -> b h (g l) p")[:, :, :T, :T]  # [B, H, T, T]

    def _segments(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Queries ``[B·G, H, L, D]``, keys and values ``[B·G, H, L + G, D]`` (own segment, then summaries), mask ``[B·G, 1, L, L + G]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        L = self.segment or math.ceil(math.sqrt(T))
        G = -(-T // L)
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)  # [B, H, T, D] each
        pad = G * L - T
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # [B, H, G·L, D]
        pos = torch.arange(G * L, device=x.device).view(G, L)  # token positions by segment
        real = pos < T  # [G, L]
        counts = real.sum(1).to(k.dtype)[:, None]  # [G, 1]
        k_sum = rearrange(k, "b h (g l) d -> b h g l d", l=L).sum(3) / counts  # [B, H, G, D] mean keys
        v_sum = rearrange(v, "b h (g l) d -> b h g l d", l=L).sum(3) / counts  # [B, H, G, D] mean values

        def fold(t: Tensor) -> Tensor:
            return rearrange(t, "b h (g l) d -> (b g) h l d", l=L)  # [B·G, H, L, D]

        def with_summaries(t: Tensor, s: Tensor) -> Tensor:
            return torch.cat([fold(t), s[:, None].expand(B, G, *s.shape[1:]).flatten(0, 1)], dim=2)  # [B·G, H, L + G, D]

        i = torch.arange(L, device=x.device)
        g = torch.arange(G, device=x.device)
        local = real[:, None, :].expand(G, L, L)  # [G, L, L] query, key of the own segment
        summary = g[:, None] != g[None, :]  # [G, G] query segment, summary
        if self.is_causal:
            local = local & (i[:, None] >= i[None, :])
            summary = g[:, None] > g[None, :]
        mask = torch.cat([local, summary[:, None, :].expand(G, L, G)], dim=2) & real[:, :, None]  # [G, L, L + G]
        mask = mask[:, None].repeat(B, 1, 1, 1)  # [B·G, 1, L, L + G], padded queries see nothing
        return fold(q), with_summaries(k, k_sum), with_summaries(v, v_sum), mask
