"""Paper 11: FIT, Far-reaching Interleaved Transformers (Chen & Li 2023).

The ``T`` tokens are cut into ``G`` groups of ``n = T / G`` consecutive tokens. A FIT block runs

1. **local layers** on the tokens: transformer layers whose attention stays inside a group
   (``masks.segments``), ``O(T·n)``;
2. **read**: each group's ``K`` latents cross-attend to the tokens of their own group;
3. **global layers** on the ``G·K`` latents: transformer layers with full self-attention across
   groups, ``O((G·K)²)``;
4. **write**: each token cross-attends to the latents of its own group, so what one group's
   latents gathered from the others reaches its tokens.

Layers are pre-norm; read and write are pre-norm cross-attention with a residual and no
feed-forward, as in the paper's code (google-research/pix2seq, ``architectures/transformers.py``,
``FITAR``/``FITDenoiser``: ``l2x_cross_attn`` then ``l_network`` then ``x2l_cross_attn``). Latents
start as a learned ``[G, K, C]`` table; a stack of blocks may carry them from block to block.
This module is the bidirectional (encoder) form; every attention goes through ``attend`` with a
site: ``fit.local.{i}``, ``fit.read``, ``fit.global.{i}``, ``fit.write``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register

__all__ = ["FIT"]


class _Attention(nn.Module):
    """Multi-head attention from ``x`` (queries) to ``context`` (keys and values) at a named site."""

    def __init__(self, dim: int, heads: int, name: str, backend: str):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.site = Site(name=name, num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor, context: Tensor, mask: M.Mask | None) -> Tensor:
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, Tq, D]
        k, v = (rearrange(t, "b s (h d) -> b h s d", h=self.heads) for t in self.kv_proj(context).chunk(2, dim=-1))  # [B, H, Tk, D]
        out = attend(q, k, v, mask=mask, backend=self.backend, site=self.site)  # [B, H, Tq, D]
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # [B, Tq, C]


class _Layer(nn.Module):
    """A pre-norm transformer layer: self-attention under ``mask``, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, name: str, backend: str, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, name, backend)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, mask: M.Mask | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.norm2(x))


class _Cross(nn.Module):
    """Pre-norm cross-attention with a residual and no MLP: FIT's read and write."""

    def __init__(self, dim: int, heads: int, name: str, backend: str):
        super().__init__()
        self.norm_x, self.norm_context = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, name, backend)

    def forward(self, x: Tensor, context: Tensor, mask: M.Mask) -> Tensor:
        return x + self.attn(self.norm_x(x), self.norm_context(context), mask)


@register("fit", paper="11", layout="[B, T, C]", time="O(T·T/G + (G·K)²)", memory="O(T + G·K)")
class FIT(nn.Module):
    """A FIT block: local layers within groups, then latents read, mix globally and write back.

    Paper: 11 (FIT: Far-reaching Interleaved Transformers).
    Shapes: ``x [B, T, C]`` → ``[B, T, C]``, ``T`` a multiple of ``groups``; latents
    ``[B, G·K, C]`` (``K = latents_per_group``) in and out when carried between blocks.

    Args:
        dim: model width ``C``.
        heads: attention heads of every layer.
        groups: number of groups ``G``; group ``g`` holds tokens ``g·T/G .. (g+1)·T/G - 1``.
        latents_per_group: latents ``K`` per group.
        local_layers: transformer layers within groups.
        global_layers: transformer layers over all latents; 0 gives a local-only block (no
            latents, no read or write: groups never exchange information).
        mlp_ratio: MLP width multiple.
        backend: attention backend for every attention call.

    Example:
        >>> m = FIT(16, 2, groups=4, latents_per_group=2, local_layers=1, global_layers=1)
        >>> m(torch.randn(2, 12, 16)).shape
        torch.Size([2, 12, 16])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        groups: int = 8,
        latents_per_group: int = 8,
        local_layers: int = 2,
        global_layers: int = 4,
        mlp_ratio: int = 4,
        backend: str = "auto",
    ):
        super().__init__()
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        for name, val in (("groups", groups), ("latents_per_group", latents_per_group), ("mlp_ratio", mlp_ratio)):
            if val < 1:
                raise ValueError(f"{name} must be at least 1, got {name}={val}")
        if local_layers < 0 or global_layers < 0 or local_layers + global_layers == 0:
            raise ValueError(
                f"local_layers and global_layers must be >= 0 and not both 0, got local_layers={local_layers}, global_layers={global_layers}"
            )
        self.dim, self.heads, self.groups, self.latents_per_group = dim, heads, groups, latents_per_group
        self._mask_cache: dict[tuple[int, str], tuple[M.Mask, M.Mask, M.Mask]] = {}
        self.local = nn.ModuleList(_Layer(dim, heads, f"fit.local.{i}", backend, mlp_ratio) for i in range(local_layers))
        self.globals = nn.ModuleList(_Layer(dim, heads, f"fit.global.{i}", backend, mlp_ratio) for i in range(global_layers))
        if global_layers:
            self.latents = nn.Parameter(torch.randn(groups, latents_per_group, dim) * 0.02)  # [G, K, C]
            self.read = _Cross(dim, heads, "fit.read", backend)
            self.write = _Cross(dim, heads, "fit.write", backend)

    def forward(self, x: Tensor, latents: Tensor | None = None, *, return_latents: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Run the block; with ``return_latents`` also return the latents ``[B, G·K, C]`` for the next block.

        Args:
            x: tokens ``[B, T, C]``.
            latents: latents from a previous block, ``[B, G·K, C]``; default the learned table.
            return_latents: return ``(x, latents)`` instead of ``x``.
        """
        B, T, C = x.shape
        G, K = self.groups, self.latents_per_group
        if T % G:
            raise ValueError(f"the length must be a multiple of groups, got T={T}, groups={G}: pad the sequence to {-(-T // G) * G}")
        if not self.globals and (latents is not None or return_latents):
            raise ValueError("a local-only block (global_layers=0) has no latents: pass none and do not ask for them")
        local, read, write = self._masks(T, x.device)
        for layer in self.local:
            x = layer(x, local)  # [B, T, C]
        if not self.globals:
            return x
        z = rearrange(self.latents, "g k c -> (g k) c").to(x.dtype).expand(B, -1, -1) if latents is None else latents  # [B, G·K, C]
        if z.shape != (B, G * K, C):
            raise ValueError(f"latents must be [B, G·K, C] = {[B, G * K, C]}, got {list(z.shape)}")
        z = self.read(z, x, read)  # [B, G·K, C]
        for layer in self.globals:
            z = layer(z, None)  # [B, G·K, C]
        x = self.write(x, z, write)  # [B, T, C]
        return (x, z) if return_latents else x

    def _masks(self, T: int, device) -> tuple[M.Mask, M.Mask, M.Mask]:
        """Token↔token, latent→token and token→latent group masks for length ``T``, kept per length so
        their tile plans (cached on each mask) are reused from call to call."""
        key = (T, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) >= 4:
                self._mask_cache.pop(next(iter(self._mask_cache)))
            tok = torch.arange(T, device=device) // (T // self.groups)  # [T] group of each token
            lat = torch.arange(self.groups * self.latents_per_group, device=device) // self.latents_per_group  # [G·K]
            self._mask_cache[key] = (M.segments(tok), M.segments(lat, tok), M.segments(tok, lat))
        return self._mask_cache[key]
