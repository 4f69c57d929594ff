"""Paper 42: Neighborhood Attention (NAT, NATTEN), on 1-D, 2-D and 3-D token grids.

Each query attends to the ``kernel_size`` nearest keys per axis: a window centred on the query
and shifted inward at the borders, so every query sees exactly ``kernel_size**ndim`` keys.
Dilation ``d`` spreads the window over every ``d``-th token (the query's dilation group); a
causal axis keeps the query and the ``kernel_size - 1`` keys before it. The rule is
:func:`attnlab.core.masks.neighborhood`; :func:`attnlab.core.attend` runs it with the blocked
backend, which computes only the tiles a window touches, so time is linear in the tokens.

NAT's relative position bias (``rpb``) is a learned table ``[heads, 2k-1, ...]`` indexed by a
key's offset from its query in units of the dilation. It is exact but never a ``[T, T]`` tensor:
:func:`fold_bias` appends it to ``q·k`` as ``kernel_size**ndim`` extra dimensions (one per window
slot), so the q·k product grows from ``D`` to ``D + k**ndim`` dimensions (49 more for a 7×7
kernel, 343 for 7×7×7): with ``D = 32`` and a 7×7 kernel it about doubles the module's time.

Inputs are channels-last like NATTEN: ``[B, L, C]``, ``[B, H, W, C]`` or ``[B, D, H, W, C]``.
"""

from __future__ import annotations

import functools
import math

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register

__all__ = ["NeighborhoodAttention", "fold_bias"]


def fold_bias(q: Tensor, k: Tensor, query_bias: Tensor, key_code: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Fold a per-key-slot additive bias into the q·k product, so ``attend`` needs no ``[Tq, Tk]`` bias.

    Returns ``q' = [q · scale, query_bias]`` and ``k' = [k, key_code]``, so that
    ``q'_i · k'_j = scale · q_i · k_j + query_bias_i · key_code_j``. With ``key_code_j`` one-hot on
    the slot of key ``j`` this adds ``query_bias[i, slot(j)]``: any bias that, for the keys a query
    may see, depends only on the query and the key's slot. Call ``attend(q', k', v, scale=1.0)``.

    Args:
        q: ``[B, H, Tq, D]``.
        k: ``[B, H, Tk, D]``.
        query_bias: ``[B|1, H, Tq, S]``, the bias of each query for each of ``S`` key slots.
        key_code: ``[Tk, S]``, 0/1 (one-hot, or one-hot per axis for per-axis biases).
        scale: the softmax scale of ``q·k``.

    Example:
        >>> q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
        >>> qb, kc = torch.randn(1, 2, 3, 5), torch.eye(5)[[0, 4, 2]]
        >>> q2, k2 = fold_bias(q, k, qb, kc, 0.5)
        >>> torch.allclose(q2 @ k2.mT, 0.5 * q @ k.mT + qb[..., [0, 4, 2]], atol=1e-6)
        True
    """
    B, H, Tq, _ = q.shape
    qb = query_bias.to(q.dtype).expand(B, H, Tq, -1)  # [B, H, Tq, S]
    kc = key_code.to(device=k.device, dtype=k.dtype).expand(B, H, -1, -1)  # [B, H, Tk, S]
    return torch.cat([q * scale, qb], dim=-1), torch.cat([k, kc], dim=-1)  # [B, H, T, D + S]


@functools.lru_cache(maxsize=16)
def _mask(kernel: tuple, dilation: tuple, causal: tuple, shape: tuple) -> M.Mask:
    """One mask per configuration, shared by every layer, so its tile plan is built once."""
    return M.neighborhood(kernel, dilation, causal, shape=shape)


@functools.lru_cache(maxsize=16)
def _rpb_index(kernel: tuple, dilation: tuple, causal: tuple, shape: tuple) -> tuple[tuple[Tensor, ...], Tensor]:
    """rpb positions of each query's window slots per axis, and every key's slot one-hot ``[T, K]`` (float32).

    A window holds ``k`` consecutive members of the query's dilation group, so a key's slot
    ``(c // d) % k`` is unique in it; the slot's rpb position is the key's offset from the query
    in dilation units, plus ``k - 1``. Axis ``a``'s positions ``[n_a, k_a]`` are viewed to
    broadcast as ``[*grid, *kernel]``, ready to index the table.
    """
    nd = len(shape)
    index, slot = [], torch.zeros((), dtype=torch.long)
    for a, (n, k, d, causal_axis) in enumerate(zip(shape, kernel, dilation, causal)):
        c = torch.arange(n)
        g, iq = c % d, c // d
        if causal_axis:
            start = iq - k + 1
        else:
            group_len = (n - g + d - 1) // d  # members of this query's dilation group
            start = torch.minimum((iq - k // 2).clamp(min=0), group_len - k)
        m = torch.arange(k)
        ik = start[:, None] + (m[None, :] - start[:, None]) % k  # [n, k] group position held by slot m
        view = [1] * (2 * nd)
        view[a], view[nd + a] = n, k
        index.append((ik - iq[:, None] + k - 1).view(view))
        slot = (slot[..., None] * k + (c // d) % k).flatten()  # row-major joint slot of every key
    return tuple(index), nn.functional.one_hot(slot, math.prod(kernel)).float()


@register("neighborhood", paper="42", layout="[B, H, W, C]", time="O(T·k^ndim)", memory="O(T)")
class NeighborhoodAttention(nn.Module):
    """Neighborhood attention: each token attends to its ``kernel_size**ndim`` nearest tokens.

    Paper: 42 (Neighborhood Attention Transformer, NAT; dilation from DiNAT; NATTEN semantics).
    Shapes: ``x [B, *grid, C]`` with ``len(grid) == ndim`` (``[B, L, C]``, ``[B, H, W, C]`` or
    ``[B, D, H, W, C]``, channels-last like NATTEN) → the same shape.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        kernel_size: window size per axis (an int or one per axis); ``kernel_size * dilation``
            must not exceed the axis length.
        dilation: step between window members per axis.
        is_causal: causal per axis (a bool or one per axis); a causal axis sees the query and the
            ``kernel_size - 1`` tokens before it (fewer near the start).
        ndim: grid dimensions, 1, 2 or 3.
        rel_pos_bias: learn NAT's relative position bias ``[heads, 2k-1, ...]``; it costs
            ``kernel_size**ndim`` extra dimensions in ``q·k`` (see the module docstring).
        qkv_bias: bias in the q, k, v projection (NAT: True).
        backend: the :func:`attnlab.core.attend` backend; ``"auto"`` runs large grids blocked.

    Example:
        >>> m = NeighborhoodAttention(32, 4, kernel_size=3)
        >>> m(torch.randn(2, 6, 5, 32)).shape
        torch.Size([2, 6, 5, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kernel_size: int | tuple[int, ...] = 7,
        dilation: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        ndim: int = 2,
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3 (the token grid), got ndim={ndim}")
        self.kernel_size = _per_axis(kernel_size, ndim, "kernel_size", int)
        self.dilation = _per_axis(dilation, ndim, "dilation", int)
        self.is_causal = _per_axis(is_causal, ndim, "is_causal", bool)
        for name, vals in (("kernel_size", self.kernel_size), ("dilation", self.dilation)):
            if min(vals) < 1:
                raise ValueError(f"{name} must be >= 1 on every axis, got {name}={vals}")
        self.dim, self.heads, self.ndim, self.backend = dim, heads, ndim, backend
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpb = None
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02)
        self.site = Site(name="neighborhood", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.ndim + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"x must be [batch, *grid, channels] with {self.ndim} grid axes and {self.dim} channels (channels-last), "
                f"got shape {tuple(x.shape)}"
            )
        B, *grid, C = x.shape
        grid = tuple(grid)
        qkv = self.qkv(x.reshape(B, -1, C))  # [B, T, 3C]
        q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.heads)  # [B, H, T, D] each
        config = (self.kernel_size, self.dilation, self.is_causal, grid)
        scale = self.head_dim**-0.5
        if self.rpb is not None:
            index, key_code = _rpb_index(*config)  # key_code [T, K]
            table = self.rpb[(slice(None), *(i.to(x.device) for i in index))]  # [H, *grid, *kernel]
            q, k = fold_bias(q, k, table.reshape(1, self.heads, -1, key_code.shape[1]), key_code, scale)  # [B, H, T, D + K]
            scale = 1.0
        out = attend(q, k, v, mask=_mask(*config), scale=scale, backend=self.backend, site=self.site)  # [B, H, T, D]
        out = rearrange(out, "b h t d -> b t (h d)")
        return self.proj(out).view(B, *grid, C)


def _per_axis(value, ndim: int, name: str, kind: type) -> tuple:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(vals) != ndim:
        raise ValueError(f"{name} needs one value or one per axis ({ndim}), got {name}={value!r}")
    for v in vals:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int or one int per axis, got {name}={value!r}")
        if kind is bool and not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool or one bool per axis, got {name}={value!r}")
    return vals
