"""Paper 15: BiFormer bi-level routing attention (BRA).

The image is cut into ``n_win × n_win`` regions (S² regions of ``w²`` tokens). Coarse level:
region-level queries and keys are the means of each region's tokens, and their affinity
``Q_r K_rᵀ`` routes every region to its ``topk`` most related regions. Fine level: every token
attends to the tokens of its region's routed regions, gathered into one key/value set, and a
5×5 depthwise convolution of the values (local context enhancement, LCE) is added before the
output projection.

The fine level is an :func:`attnlab.core.attend` call whose batch is (image, region): the
queries of a call row are a region's ``w²`` tokens, its keys the ``topk · w²`` gathered tokens.
No ``T × T`` mask exists and no empty tile is computed; probes at the site see one row per
token over its gathered keys. With nothing attached, regions go through that call in slabs of
about :data:`SLAB_KEYS` gathered keys (same numbers; at 128×128 with 8×8 regions the forward
took 20% less). When every region is routed (``topk = S²``) nothing is gathered:
the call is full attention over the tokens. Images whose sides are not multiples of ``n_win``
are zero-padded to whole regions; padded tokens are left out of the region means and, by the
mask, out of attention (as keys, and as queries, whose rows are empty and unseen by probes),
so the result is the same as on an image that divides evenly.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attached, attend
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

SLAB_KEYS = 2**14  # gathered keys per slab of regions (with values: 16 MiB at 128 channels, less per head)

__all__ = ["BiLevelRoutingAttention"]


@register("biformer", paper="15", layout="[B, H, W, C]", time="O(k·T²/S²)", memory="O(k·T)")
class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention: top-k region routing, then token attention over the routed regions.

    Paper: 15 (BiFormer: Vision Transformer with Bi-Level Routing Attention).
    Shapes: ``x [B, H, W, C]`` (channels-last, like NATTEN) -> ``[B, H, W, C]``.

    Args:
        dim: channels ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        n_win: regions per side ``S`` (the paper's 7; ``S²`` regions in all).
        topk: regions each region routes to (the paper uses 1, 4, 16 and all, by stage);
            None (or ``S²``) routes to all regions, which is full attention.
        lce_kernel: side of the depthwise convolution on V added to the output (the paper's 5);
            0 turns the local context enhancement off.
        scale: logit scale; default ``1/sqrt(dim // heads)``. The official code uses
            ``dim ** -0.5`` (pass ``scale=dim ** -0.5`` to match its checkpoints).
        backend: :func:`attnlab.core.attend` backend for the fine level.

    Example:
        >>> import torch
        >>> m = BiLevelRoutingAttention(32, 2, n_win=2, topk=2)
        >>> m(torch.randn(1, 6, 6, 32)).shape
        torch.Size([1, 6, 6, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        n_win: int = 7,
        topk: int | None = 4,
        lce_kernel: int = 5,
        scale: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        positive_ints(dim=dim, heads=heads, n_win=n_win)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n_win**2):
            raise ValueError(f"topk must be None (all regions) or an integer in [1, n_win**2 = {n_win**2}], got topk={topk!r}")
        if isinstance(lce_kernel, bool) or not isinstance(lce_kernel, int) or lce_kernel < 0 or (lce_kernel and lce_kernel % 2 == 0):
            raise ValueError(f"lce_kernel must be 0 (off) or an odd positive integer such as 5, got lce_kernel={lce_kernel!r}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale <= 0):
            raise ValueError(f"scale must be a positive float or None (1/sqrt(head_dim)), got scale={scale!r}")
        self.dim, self.heads, self.n_win = dim, heads, n_win
        self.topk = n_win**2 if topk is None else topk
        self.scale = float(scale) if scale is not None else (dim // heads) ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lce = nn.Conv2d(dim, dim, lce_kernel, padding=lce_kernel // 2, groups=dim) if lce_kernel else None
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="biformer", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C = dim = {self.dim}, got shape {tuple(x.shape)}")
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, H, W, C] each
        out = self.routed_attention(q, k, v)  # [B, H, W, C]
        if self.lce is not None:
            out = out + self.lce(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # [B, H, W, C]
        return self.proj(out)

    def _regions(self, t: Tensor) -> Tensor:
        """``[B, H, W, X]`` -> ``[B, S², w², X]``, zero-padded to whole regions."""
        H, W = t.shape[1:3]
        S = self.n_win
        t = F.pad(t, (0, 0, 0, -W % S, 0, -H % S))
        return rearrange(t, "b (sy ry) (sx rx) c -> b (sy sx) (ry rx) c", sy=S, sx=S)  # [B, S², w², X]

    def route(self, q: Tensor, k: Tensor) -> Tensor:
        """The coarse level: for each region, the indices ``[B, S², topk]`` of its routed regions.

        Region queries and keys are the means of ``q`` and ``k`` (``[B, H, W, C]``) over each
        region's tokens (padding excluded); regions are ranked by ``q_r · k_r`` (all heads
        together, as in the paper). Routing is a hard choice: no gradient flows through it.
        """
        with torch.no_grad():
            qr, kr = self._regions(q), self._regions(k)  # [B, S², w², C]
            count = self._regions(q.new_ones(1, *q.shape[1:3], 1)).sum(2)  # [1, S², 1] real tokens per region
            q_mean = qr.sum(2) / count.clamp(min=1)  # [B, S², C]
            k_mean = kr.sum(2) / count.clamp(min=1)
            affinity = torch.matmul(q_mean, k_mean.transpose(-1, -2))  # [B, S², S²]
            affinity = affinity.masked_fill(count.view(1, 1, -1) == 0, float("-inf"))  # never route to pure padding
            return affinity.topk(self.topk, dim=-1).indices  # [B, S², topk]

    def _slab(self, qr: Tensor, kr: Tensor, vr: Tensor, routes: Tensor, real: Tensor | None, s0: int) -> Tensor:
        """Regions ``s0 .. s0 + n - 1``: ``qr, kr, vr [B, S², h, w², d]``, their ``routes [B, n, topk]`` -> ``[B, n, h, w², d]``.

        The routed regions are gathered with ``index_select`` (its backward is an ``index_add``;
        advanced indexing's, an ``index_put`` with accumulation, took 21% of the forward+backward).
        """
        B, S2, h, w2, d = qr.shape
        n, topk = routes.shape[1:]
        q = qr[:, s0 : s0 + n].reshape(B * n, h, w2, d)  # [B·n, h, w², d]
        flat = (routes + S2 * torch.arange(B, device=routes.device).view(B, 1, 1)).flatten()  # [B·n·topk] rows of [B·S², ...]
        k, v = (
            t.flatten(0, 1).index_select(0, flat).view(B * n, topk, h, w2, d).transpose(1, 2).reshape(B * n, h, topk * w2, d)
            for t in (kr, vr)
        )
        mask = None
        if real is not None:
            mask = real[None, s0 : s0 + n, :, None] & real[routes].flatten(2)[:, :, None, :]  # [B, n, w², topk·w²]
            mask = mask.flatten(0, 1).unsqueeze(1)  # [B·n, 1, w², topk·w²]
        out = attend(q, k, v, mask=mask, scale=self.scale, backend=self.backend, site=self.site)  # [B·n, h, w², d]
        return out.view(B, n, h, w2, d)

    def routed_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The fine level: each token attends to the tokens of its region's routed regions.

        Args:
            q, k, v: ``[B, H, W, C]`` projected queries, keys and values.

        Returns:
            ``[B, H, W, C]``, the heads concatenated (before LCE and the output projection).
        """
        B, H, W, C = q.shape
        S, h = self.n_win, self.heads
        if self.topk == S * S:  # every region is routed: full attention over the tokens, nothing to gather
            out = attend(
                *(rearrange(t, "b y x (h d) -> b h (y x) d", h=h) for t in (q, k, v)),
                scale=self.scale,
                backend=self.backend,
                site=self.site,
            )
            return rearrange(out, "b h (y x) d -> b y x (h d)", y=H)  # [B, H, W, C]
        routes = self.route(q, k)  # [B, S², topk]
        qr, kr, vr = (rearrange(self._regions(t), "b s n (h d) -> b s h n d", h=h) for t in (q, k, v))  # [B, S², h, w², d]
        real = None
        if H % S or W % S:  # padded tokens are neither keys nor queries (their rows are empty)
            real = self._regions(q.new_ones(1, H, W, 1, dtype=torch.bool))[0, :, :, 0]  # [S², w²]
        # Regions go in slabs of about SLAB_KEYS gathered keys, so that what is gathered is
        # attended while in cache (and no gathered tensor is large enough for its own mmap);
        # one call when probes or edits are attached, so that they see every region at once.
        n = S * S if any(attached()) else max(1, SLAB_KEYS // (B * self.topk * kr.shape[3]))
        out = torch.cat([self._slab(qr, kr, vr, routes[:, s0 : s0 + n], real, s0) for s0 in range(0, S * S, n)], dim=1)  # [B, S², h, w², d]
        out = rearrange(out, "b (sy sx) h (ry rx) d -> b (sy ry) (sx rx) (h d)", sy=S, sx=S, ry=-(-H // S))  # [B, S·ry, S·rx, C]
        return out[:, :H, :W]
