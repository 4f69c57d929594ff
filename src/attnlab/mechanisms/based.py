"""Paper 56: Based, Taylor-feature linear attention plus a small sliding window of softmax attention.

Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff" (Based, the sequel to Zoology [56]), pair two cheap mixers: global linear attention
whose feature map is the 2nd-order Taylor expansion of ``exp``,

    φ(x) = [1, x / d^{1/4}, (x ⊗ x) / (sqrt(2)·sqrt(d))],   φ(q)·φ(k) = 1 + s + s²/2,   s = q·k / sqrt(d),

on small projected ``q, k`` (``feature_dim`` = ``d`` = 16, so ``1 + d + d²`` features), and
exact softmax attention over a small sliding window (64 tokens) for local precision. The two
outputs are added and projected. ``1 + s + s²/2 > 0`` for every ``s``, so the normaliser
``Σ_{s≤t} φ(q_t)·φ(k_s)`` is positive.

The linear part has DSF's two forms (as :mod:`attnlab.mechanisms.linear`): the parallel causal
``T×T`` matrix, and the recurrent ``[1 + d + d², D + 1]`` state per head carried ``chunk`` tokens
a step, each step mapping only its own chunk to features.
The window part is :func:`attnlab.core.attend` with ``masks.sliding_window(window)`` (an
attention site; the blocked backend computes only the band, O(T·window)) in both forms.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints
from attnlab.mechanisms.linear import check_options

__all__ = ["Based", "taylor_features"]


def taylor_features(x: Tensor) -> Tensor:
    """Based's feature map ``[1, x / d^{1/4}, (x ⊗ x) / (sqrt(2)·sqrt(d))]``, so ``φ(q)·φ(k) = 1 + s + s²/2``, ``s = q·k / sqrt(d)``.

    Shapes: ``x [..., d]`` -> ``[..., 1 + d + d²]``.

    Example:
        >>> taylor_features(torch.ones(3, 4)).shape
        torch.Size([3, 21])
    """
    d = x.shape[-1]
    x2 = rearrange(x[..., :, None] * x[..., None, :], "... i j -> ... (i j)")  # [..., d²]
    return torch.cat([x.new_ones(*x.shape[:-1], 1), x / d**0.25, x2 / (2**0.5 * d**0.5)], dim=-1)


@register(
    "based",
    paper="56",
    time="O(T²·F) parallel, O(T·c·F + T·F·D + T·w·D) recurrent",
    memory="O(T²) parallel, O(T·F·D/c + T·D) recurrent (chunk states)",
)
class Based(nn.Module):
    """Based: Taylor-feature linear attention (global) plus sliding-window softmax attention (local), summed.

    Paper: 56 (Zoology; Based, Arora et al. 2024), ``φ(q)·φ(k) = 1 + s + s²/2`` plus a window of softmax attention.
    Shapes: ``x [B, T, C] -> [B, T, C]``; per head ``D = C / heads``, features ``F = 1 + d + d²``
    with ``d = feature_dim``.

    Args:
        dim: model width ``C``.
        heads: number of heads (of both parts).
        form: ``"parallel"`` (the linear part as the masked ``T×T`` matrix) or ``"recurrent"``
            (its DSF state); :meth:`parallel` and :meth:`recurrent` run either form directly.
        feature_dim: ``d``, the width ``q`` and ``k`` are projected to before the Taylor map.
        window: keys before the query that the softmax part sees (``masks.sliding_window(window)``).
        chunk: tokens per step of the recurrent form.

    Example:
        >>> m = Based(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", feature_dim: int = 16, window: int = 64, chunk: int = 64):
        super().__init__()
        check_options(dim, heads, form, chunk)
        positive_ints(feature_dim=feature_dim, window=window)
        self.dim, self.heads, self.form, self.feature_dim, self.window, self.chunk = dim, heads, form, feature_dim, window, chunk
        self.mask = M.sliding_window(window)
        self.qk = nn.Linear(dim, 2 * heads * feature_dim)  # the linear part's q, k
        self.v = nn.Linear(dim, dim)  # the linear part's v
        self.qkv = nn.Linear(dim, 3 * dim)  # the window part's q, k, v
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="based.window", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """The linear part as ``tril(φ(Q) φ(K)ᵀ) V / η``, O(T²·F)."""
        q, k, v = self._features(x)
        a = torch.matmul(q, k.transpose(-1, -2)).tril()  # [B, H, T, T] 1 + s + s²/2, causal
        return self._out(torch.matmul(a, v), x)

    def recurrent(self, x: Tensor) -> Tensor:
        """The linear part as the DSF state ``h_t = h_{t−1} + φ(k_t) [v_t, 1]ᵀ``, ``chunk`` tokens a step.

        Each step maps only its chunk's ``q, k`` to features, so the ``[T, F]`` features are never
        held at once (they are 17× wider than ``q`` at ``d = 16``):
        ``Y_n = φ(Q_n) h_{n−1} + tril(φ(Q_n) φ(K_n)ᵀ) V_n``, ``h_n = h_{n−1} + φ(K_n)ᵀ V_n``.
        """
        q, k, v = self._qkv(x)
        F = 1 + self.feature_dim + self.feature_dim**2
        h = v.new_zeros(*v.shape[:2], F, v.shape[-1])  # [B, H, F, D + 1]
        ys = []
        for qn, kn, vn in zip(q.split(self.chunk, 2), k.split(self.chunk, 2), v.split(self.chunk, 2)):
            qn, kn = taylor_features(qn), taylor_features(kn)  # [B, H, c, F]
            ys.append(torch.matmul(qn, h) + torch.matmul(torch.matmul(qn, kn.transpose(-1, -2)).tril(), vn))  # [B, H, c, D + 1]
            h = h + torch.matmul(kn.transpose(-1, -2), vn)
        return self._out(torch.cat(ys, dim=2), x)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``φ(q), φ(k)`` ``[B, H, T, F]`` and ``[v, 1]`` ``[B, H, T, D + 1]``."""
        q, k, v = self._qkv(x)
        return taylor_features(q), taylor_features(k), v

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k`` ``[B, H, T, d]`` and ``[v, 1]`` ``[B, H, T, D + 1]`` (the last column builds the normaliser)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        q, k = rearrange(self.qk(x), "b t (two h d) -> two b h t d", two=2, h=self.heads)  # [B, H, T, d] each
        v = rearrange(self.v(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        return q, k, torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, H, T, D + 1]

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        y = y[..., :-1] / y[..., -1:]  # [B, H, T, D] the linear part, normalised
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)  # [B, H, T, D] each
        y = y + attend(q, k, v, mask=self.mask, site=self.site)  # [B, H, T, D] plus the window part
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))  # [B, T, C]
