"""Paper 19: ConViT gated positional self-attention (GPSA).

Each head mixes content attention with a positional attention that depends only on the offset
``δ = (δx, δy)`` from the query patch to the key patch:

    A_h = (1 − σ(λ_h)) · softmax(q kᵀ · scale) + σ(λ_h) · softmax(w_h · r_ij),   r_ij = (δx, δy, δx² + δy²)

with ``σ(λ_h)`` a learned per-head gate (``λ = 1`` at init, as in ConViT). The local
initialisation sets ``w_h = α · (2Δx_h, 2Δy_h, −1)``, so head ``h``'s positional logits are
``α(|Δ_h|² − |δ − Δ_h|²)``: a bump centred on the head's own offset ``Δ_h`` of the ``√H × √H``
grid around the query (ConViT's 9 heads cover the 3×3 neighbourhood, head ``h`` at row
``h // 3 − 1``, column ``h % 3 − 1``), sharper for a larger locality strength ``α``; the value
projection starts as the identity, so at init the layer behaves like a convolution.

Both terms are distributions and the mix is convex, so ConViT's renormalisation is a no-op and
the output is ``(1 − σ)·attend(content) + σ·attend(positional)``. The content attention runs at
``self.site``; the positional one at ``self.positional_site``, as softmax attention whose only
logits are the positional bias (``q·k = 0``): probes and edits see both.
"""

from __future__ import annotations

import functools
import math

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core.backends import Inputs, reference_probs
from attnlab.mechanisms import register

__all__ = ["GPSA", "head_offsets", "relative_positions"]


def head_offsets(heads: int) -> Tensor:
    """Offsets ``(Δy, Δx)`` ``[H, 2]`` of the local init: head ``h`` at row ``h // k``, column ``h % k`` of a ``k × k`` grid centred on 0."""
    k = math.isqrt(heads)
    c = (k - 1) / 2
    h = torch.arange(heads)
    return torch.stack([h // k - c, h % k - c], dim=-1).to(torch.get_default_dtype())  # [H, 2]


def relative_positions(height: int, width: int) -> Tensor:
    """``r_ij = (δx, δy, δx² + δy²)`` ``[T, T, 3]`` from query ``i`` to key ``j`` of a row-major grid."""
    return _planar_positions(height, width).permute(1, 2, 0).contiguous()  # a copy: the cached offsets stay as they are


CACHED_TOKENS = 64 * 64  # grids up to this many tokens keep their offsets (3·T² floats, 200 MB at 64×64)


def _planar_positions(height: int, width: int) -> Tensor:
    """``(δx, δy, δx² + δy²)`` as ``[3, T, T]`` float32, cached for grids of up to :data:`CACHED_TOKENS`."""
    if height * width <= CACHED_TOKENS:
        return _cached_positions(height, width)
    return _grid_offsets(height, width)


@functools.lru_cache(maxsize=2)
def _cached_positions(height: int, width: int) -> Tensor:
    return _grid_offsets(height, width)


def _grid_offsets(height: int, width: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # [T]
    dx, dy = xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]  # [T, T] key minus query (exact: small integers)
    return torch.stack([dx, dy, dx * dx + dy * dy])  # [3, T, T]


@register("gpsa", paper="19", layout="[B, H, W, C]", time="O(T²)", memory="O(T²)")
class GPSA(nn.Module):
    """ConViT gated positional self-attention: a per-head gate between content and positional attention.

    Paper: 19, ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by it, and with ``local_init`` it
            must be a perfect square (4, 9, 16: the heads tile a ``√H × √H`` neighbourhood).
        local_init: the paper's locality initialisation (head offsets, identity values).
        locality_strength: α, how sharply each head's positional attention peaks (paper: 1).
        gate_init: initial λ of every head; the gate is ``σ(λ)`` (paper: 1).
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) → ``[B, Hg, Wg, C]``.

    Example:
        >>> m = GPSA(dim=18, heads=9)
        >>> m(torch.randn(2, 5, 5, 18)).shape
        torch.Size([2, 5, 5, 18])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        local_init: bool = True,
        locality_strength: float = 1.0,
        gate_init: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if local_init and math.isqrt(heads) ** 2 != heads:
            raise ValueError(f"local_init needs a square number of heads (4, 9, 16, ...), got heads={heads}; or pass local_init=False")
        if not locality_strength > 0:
            raise ValueError(f"locality_strength must be > 0 (paper: 1), got locality_strength={locality_strength!r}")
        self.dim, self.heads, self.backend = dim, heads, backend
        self.qk = nn.Linear(dim, 2 * dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.pos_weight = nn.Parameter(torch.randn(heads, 3) * 0.02)  # w_h over (δx, δy, δ²)
        self.gate = nn.Parameter(torch.full((heads,), float(gate_init)))  # λ_h
        self.site = Site(name="gpsa", num_heads=heads, num_kv_heads=heads)
        self.positional_site = Site(name="gpsa.positional", num_heads=heads, num_kv_heads=heads)
        if local_init:
            self.local_init(locality_strength)

    @torch.no_grad()
    def local_init(self, locality_strength: float = 1.0) -> None:
        """Centre head ``h``'s positional attention on its offset ``Δ_h`` (:func:`head_offsets`); values start as the identity."""
        dy, dx = head_offsets(self.heads).unbind(-1)
        self.pos_weight.copy_(locality_strength * torch.stack([2 * dx, 2 * dy, -torch.ones_like(dx)], dim=-1))
        self.v.weight.copy_(torch.eye(self.dim))

    def positional_logits(self, height: int, width: int) -> Tensor:
        """``w_h · r_ij`` ``[H, T, T]`` for a ``height × width`` grid."""
        rel = _planar_positions(height, width).to(self.pos_weight)  # [3, T, T]
        T = height * width
        return torch.matmul(self.pos_weight, rel.view(3, T * T)).view(-1, T, T)  # [H, T, T]

    def _check(self, x: Tensor) -> torch.Size:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C={self.dim}, got shape {tuple(x.shape)}")
        return x.shape

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = rearrange(x, "b y x c -> b (y x) c")  # [B, T, C]
        q, k = rearrange(self.qk(t), "b t (two h d) -> two b h t d", two=2, h=self.heads)  # [B, H, T, D] each
        v = rearrange(self.v(t), "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        return q, k, v

    def probs(self, x: Tensor) -> Tensor:
        """The mixed attention ``A_h`` ``[B, H, T, T]`` (float32), materialised for analysis."""
        _, Hg, Wg, _ = self._check(x)
        q, k, v = self._qkv(x)
        content = reference_probs(Inputs(q, k, v, q.shape[-1] ** -0.5))  # [B, H, T, T]
        positional = torch.softmax(self.positional_logits(Hg, Wg).to(content.dtype), dim=-1)  # [H, T, T]
        g = torch.sigmoid(self.gate).to(content.dtype).view(1, -1, 1, 1)  # [1, H, 1, 1]
        return (1 - g) * content + g * positional

    def forward(self, x: Tensor) -> Tensor:
        B, Hg, Wg, _ = self._check(x)
        q, k, v = self._qkv(x)
        content = attend(q, k, v, backend=self.backend, site=self.site)  # [B, H, T, D]
        bias = self.positional_logits(Hg, Wg).to(q.dtype).unsqueeze(0)  # [1, H, T, T]
        # q·k = 0: the logits are the positional bias alone. Without gradients, zeros as wide as v
        # let SDPA use its fused CPU kernel (3.5x faster at 32×32 than width 1); a bias that needs
        # gradients sends SDPA to its unfused path anyway, where width 1 costs the least.
        zeros = q.new_zeros(B, self.heads, Hg * Wg, 1 if torch.is_grad_enabled() else v.shape[-1])
        positional = attend(zeros, zeros, v, bias=bias, scale=1.0, backend=self.backend, site=self.positional_site)  # [B, H, T, D]
        g = torch.sigmoid(self.gate).to(q.dtype).view(1, -1, 1, 1)  # [1, H, 1, 1]
        out = rearrange((1 - g) * content + g * positional, "b h (y x) d -> b y x (h d)", y=Hg)  # [B, Hg, Wg, C]
        return self.proj(out)
