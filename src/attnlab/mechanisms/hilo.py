"""Paper 21: HiLo attention (LITv2): high-frequency window heads and low-frequency pooled heads.

The heads are split in two groups with their own projections, and their outputs are
concatenated along channels (Hi first, as in LITv2):

- **Lo-Fi** (``int(heads · alpha)`` heads): every query attends to keys and values computed from
  the ``pool × pool`` average-pooled map, ``T / pool²`` keys: global structure at low cost.
- **Hi-Fi** (the other heads): self-attention inside non-overlapping ``window × window`` windows
  (:func:`attnlab.core.masks.blocks_with_halo` with no halo; the blocked backend computes only
  the windows): local detail.

``pool`` defaults to ``window`` (the paper's single ``s``); ``alpha=1, pool=1`` is multi-head
self-attention and ``alpha=0`` is plain window attention. Each group is its own attention site
(``hilo.hi`` and ``hilo.lo``), since the groups differ in heads and keys.
"""

from __future__ import annotations

import functools
import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["HiLo"]


@functools.lru_cache(maxsize=16)
def _windows(window: int, shape: tuple[int, int]) -> M.Mask:
    """One mask per configuration, shared by every layer, so its tile plan is built once."""
    return M.blocks_with_halo(window, 0, shape=shape)


@register("hilo", paper="21", layout="[B, H, W, C]", time="O(T·w² + T²/p²)", memory="O(T)")
class HiLo(nn.Module):
    """HiLo attention: a fraction ``alpha`` of heads attend to pooled keys, the rest within small windows.

    Paper: 21 (Fast Vision Transformers with HiLo Attention, LITv2).
    Shapes: ``x [B, H, W, C]`` (channels-last) → ``[B, H, W, C]``; with Hi-Fi heads ``H`` and
    ``W`` must be multiples of ``window``, with Lo-Fi heads multiples of ``pool``.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        alpha: fraction of Lo-Fi heads, rounded down (paper: 0.9).
        window: Hi-Fi window side (paper: 2).
        pool: Lo-Fi average-pooling size; default ``window``; 1 = no pooling.
        qkv_bias: bias in the q, k, v projections (LITv2: False).
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = HiLo(32, 4, alpha=0.5)
        >>> m(torch.randn(2, 8, 6, 32)).shape
        torch.Size([2, 8, 6, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        alpha: float = 0.9,
        window: int = 2,
        pool: int | None = None,
        qkv_bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a fraction of heads in [0, 1], got alpha={alpha!r}")
        pool = window if pool is None else pool
        positive_ints(window=window, pool=pool)
        self.dim, self.heads, self.window, self.pool, self.backend = dim, heads, window, pool, backend
        self.head_dim = dim // heads
        self.lo_heads = int(heads * alpha)
        self.hi_heads = heads - self.lo_heads
        lo_dim, hi_dim = self.lo_heads * self.head_dim, self.hi_heads * self.head_dim
        if self.lo_heads:
            self.lo_q = nn.Linear(dim, lo_dim, bias=qkv_bias)
            self.lo_kv = nn.Linear(dim, 2 * lo_dim, bias=qkv_bias)
            self.lo_proj = nn.Linear(lo_dim, lo_dim)
        if self.hi_heads:
            self.hi_qkv = nn.Linear(dim, 3 * hi_dim, bias=qkv_bias)
            self.hi_proj = nn.Linear(hi_dim, hi_dim)
        self.hi_site = Site(name="hilo.hi", num_heads=self.hi_heads, num_kv_heads=self.hi_heads)
        self.lo_site = Site(name="hilo.lo", num_heads=self.lo_heads, num_kv_heads=self.lo_heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, height, width, {self.dim}] (channels-last), got shape {tuple(x.shape)}")
        _, H, W, _ = x.shape
        for name, size, used in (("window", self.window, self.hi_heads), ("pool", self.pool, self.lo_heads)):
            if used and (H % size or W % size):
                raise ValueError(f"height and width must be multiples of {name}={size}, got {H}x{W}: pad the input")
        outs = []
        if self.hi_heads:
            outs.append(self._hifi(x))
        if self.lo_heads:
            outs.append(self._lofi(x))
        return torch.cat(outs, dim=-1)  # [B, H, W, C]

    def _hifi(self, x: Tensor) -> Tensor:
        """Window attention in ``window × window`` windows: ``[B, H, W, C]`` → ``[B, H, W, hi_dim]``."""
        H = x.shape[1]
        q, k, v = rearrange(self.hi_qkv(x), "b y x (three h d) -> three b h (y x) d", three=3, h=self.hi_heads)  # [B, h, T, D]
        out = attend(q, k, v, mask=_windows(self.window, tuple(x.shape[1:3])), backend=self.backend, site=self.hi_site)  # [B, h, T, D]
        return self.hi_proj(rearrange(out, "b h (y x) d -> b y x (h d)", y=H))

    def _lofi(self, x: Tensor) -> Tensor:
        """Every query to the average-pooled keys and values: ``[B, H, W, C]`` → ``[B, H, W, lo_dim]``."""
        H = x.shape[1]
        q = rearrange(self.lo_q(x), "b y x (h d) -> b h (y x) d", h=self.lo_heads)  # [B, h, T, D]
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.pool).permute(0, 2, 3, 1) if self.pool > 1 else x  # [B, H/p, W/p, C]
        k, v = rearrange(self.lo_kv(pooled), "b y x (two h d) -> two b h (y x) d", two=2, h=self.lo_heads)  # [B, h, T/p², D]
        out = attend(q, k, v, backend=self.backend, site=self.lo_site)  # [B, h, T, D]
        return self.lo_proj(rearrange(out, "b h (y x) d -> b y x (h d)", y=H))
