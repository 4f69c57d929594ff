"""Paper 20: HaloNet blocked local self-attention, with per-axis relative position logits.

The image is cut into ``block × block`` query blocks; every query of a block attends to the keys
of its block extended by ``halo`` tokens on each side, a ``w × w`` window with
``w = block + 2·halo``. Logits are ``q·k / sqrt(D) + q·r_y[Δy] + q·r_x[Δx]``, with learned
relative embeddings per axis indexed by the key's offset from the query
(``Δ`` in ``-(block+halo-1) .. block+halo-1``), as HaloNet and SASA do; like timm's ``HaloAttn``,
the relative logits are not scaled by ``1/sqrt(D)``.

At the image border a window reaches outside the image. ``pad_mode`` chooses what is there:

- ``"zeros"`` (the paper's): the key/value map is padded with zeros, and the padded keys take
  part in the softmax with ``k = v = 0``: they add ``exp(q·r)`` to the denominator and nothing
  to the numerator.
- ``"mask"``: out-of-image keys are dropped from the softmax (the
  :func:`attnlab.core.masks.blocks_with_halo` rule), so border queries see fewer keys.

Two paths compute the same numbers (the tests hold them equal):

- **windows** (when nothing is attached at the site): each block's ``w × w`` window is gathered,
  as HaloNet does, and ``attend`` runs on ``[B · blocks, heads, block², w²]``: ``w²`` keys per
  query and nothing else (3-5× faster than the grid path on CPU at 64×64).
- **grid** (when probes or edits are attached, :func:`attnlab.core.attach`): ``attend`` runs on
  the whole token grid with ``blocks_with_halo``, so probes and edits see image positions. The
  zero padding is then a ring of whole blocks of zero keys (``ceil(halo/block)·block`` per
  side, blocks stay aligned); the padded query blocks are computed and dropped.

In both, the relative logits are folded into ``q·k`` as ``2w`` extra dimensions (one-hot window
row and column of each key; :func:`attnlab.mechanisms.neighborhood.fold_bias`), never a
``[Tq, Tk]`` tensor.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attached, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register
from attnlab.mechanisms.neighborhood import fold_bias

__all__ = ["HaloAttention"]

PAD_MODES = ("zeros", "mask")
SLAB_TOKENS = 2048  # queries per slab of the windows path


@functools.lru_cache(maxsize=16)
def _mask(block: int, halo: int, shape: tuple[int, int]) -> M.Mask:
    """One mask per configuration, shared by every layer, so its tile plan is built once."""
    return M.blocks_with_halo(block, halo, shape=shape)


@functools.lru_cache(maxsize=16)
def _grid_slots(block: int, halo: int, n: int) -> tuple[Tensor, Tensor]:
    """For one grid axis of ``n`` tokens: ``[n, w]`` offset positions of each query's window slots, and ``[n]`` key slots.

    A window spans ``w`` consecutive coordinates, so a key's slot ``c % w`` is unique in it. Slot
    ``s`` of the window starting at ``lo`` holds ``lo + (s - lo) % w``; its embedding position is
    that key's offset from the query plus ``block + halo - 1``.
    """
    w = block + 2 * halo
    c = torch.arange(n)
    lo = (c // block) * block - halo  # [n] first coordinate of each query's window
    key = lo[:, None] + (torch.arange(w)[None, :] - lo[:, None]) % w  # [n, w]
    return key - c[:, None] + block + halo - 1, c % w


@register("halo", paper="20", layout="[B, H, W, C]", time="O(T·(b+2h)²)", memory="O(T)")
class HaloAttention(nn.Module):
    """HaloNet attention: ``block × block`` query blocks attend to their block plus a ``halo``.

    Paper: 20 (Scaling Local Self-Attention for Parameter Efficient Visual Backbones, HaloNet).
    Shapes: ``x [B, H, W, C]`` (channels-last) → ``[B, H, W, C]``; ``H`` and ``W`` must be
    multiples of ``block``.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        block: query block side ``b`` (HaloNet: 8).
        halo: halo width ``h`` around each block (HaloNet: 3).
        pad_mode: ``"zeros"`` (HaloNet: zero keys outside the image take part in the softmax) or
            ``"mask"`` (keys outside the image are dropped); see the module docstring.
        qkv_bias: bias in the q, k, v projection (HaloNet: False, 1×1 convolutions).
        backend: the :func:`attnlab.core.attend` backend.

    HaloNet's attention has no output projection of its own (the bottleneck block's 1×1
    convolution follows it); this drop-in module has one, ``proj``.

    Example:
        >>> m = HaloAttention(32, 4, block=4, halo=1)
        >>> m(torch.randn(2, 8, 12, 32)).shape
        torch.Size([2, 8, 12, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        block: int = 8,
        halo: int = 3,
        pad_mode: str = "zeros",
        qkv_bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        for name, val, low in (("block", block, 1), ("halo", halo, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {name}={val!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got pad_mode={pad_mode!r}")
        self.dim, self.heads, self.block, self.halo, self.pad_mode, self.backend = dim, heads, block, halo, pad_mode, backend
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        span = 2 * (block + halo) - 1  # offsets -(b+h-1) .. b+h-1
        self.rel_h = nn.Parameter(torch.randn(span, self.head_dim) * self.head_dim**-0.5)  # [offsets, D]
        self.rel_w = nn.Parameter(torch.randn(span, self.head_dim) * self.head_dim**-0.5)
        self.site = Site(name="halo", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, height, width, {self.dim}] (channels-last), got shape {tuple(x.shape)}")
        _, H, W, _ = x.shape
        if H % self.block or W % self.block:
            raise ValueError(f"height and width must be multiples of block={self.block}, got {H}x{W}: pad the input to a multiple of it")
        qkv = rearrange(self.qkv(x), "b y x (three h d) -> three b h y x d", three=3, h=self.heads)  # [B, h, H, W, D] each
        observed = any(attached())  # probes or edits want image positions
        return self.proj(self._grid(*qkv) if observed else self._windows(*qkv))

    def _windows(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on gathered windows: ``[B, h, H, W, D]`` each → ``[B, H, W, C]``.

        Runs on slabs of whole block rows, about :data:`SLAB_TOKENS` queries each, so that a
        slab's windows are still in cache when attention reads them (at 128×128, one pass over
        all windows took 1.7× the time).
        """
        B, _, H, W, _ = q.shape
        b, h = self.block, self.halo
        kv = F.pad(torch.cat([k, v], dim=-1), (0, 0, h, h, h, h))  # [B, h, H+2h, W+2h, 2D]
        rows = max(1, SLAB_TOKENS // (B * W * b))  # block rows per slab
        slabs = [self._slab(q, kv, i, min(i + rows, H // b)) for i in range(0, H // b, rows)]
        return torch.cat(slabs, dim=1)

    def _slab(self, q: Tensor, kv: Tensor, i0: int, i1: int) -> Tensor:
        """Block rows ``i0 .. i1 - 1``: queries ``q [B, h, H, W, D]``, padded ``kv [B, h, H+2h, W+2h, 2D]`` → ``[B, rows, W, C]``."""
        B, _, H, W, D = q.shape
        b, h = self.block, self.halo
        w = b + 2 * h
        kv = kv[:, :, i0 * b : i1 * b + 2 * h].unfold(2, w, b).unfold(3, w, b)  # [B, h, i1-i0, W/b, 2D, w, w]
        k, v = rearrange(kv, "b h i j e u v -> (b i j) h (u v) e").split(D, dim=-1)  # [N, h, w², D] each, N = B·blocks
        q = rearrange(q[:, :, i0 * b : i1 * b], "b h (i y) (j x) d -> (b i j) h y x d", y=b, x=b)  # [N, h, b, b, D]
        u, y = torch.arange(w, device=q.device), torch.arange(b, device=q.device)
        offset = u[None, :] - (y[:, None] + h) + b + h - 1  # [b, w] window row u minus query row y, shifted to >= 0
        query_bias = self._relative_logits(q, offset, offset)  # [N, h, b², 2w]
        key_code = torch.cat([F.one_hot(u, w)[:, None].expand(w, w, w), F.one_hot(u, w)[None, :].expand(w, w, w)], dim=-1)
        q, k = fold_bias(q.flatten(2, 3), k, query_bias, key_code.flatten(0, 1), self.head_dim**-0.5)  # [N, h, ·, D + 2w]
        mask = None
        if self.pad_mode == "mask":
            ys, xs = (torch.arange(-h, n + h, device=q.device).unfold(0, w, b) for n in (H, W))  # [blocks per axis, w]
            ys = ys[i0:i1]
            inside = ((ys >= 0) & (ys < H))[:, None, :, None] & ((xs >= 0) & (xs < W))[None, :, None, :]  # [i1-i0, W/b, w, w]
            mask = inside.flatten(2, 3).flatten(0, 1)[:, None, None, :].repeat(B, 1, 1, 1)  # [N, 1, 1, w²]
        v = F.pad(v, (0, q.shape[-1] - D))  # one head dim for q, k, v lets SDPA use its fused CPU kernel (2x here)
        out = attend(q, k, v, mask=mask, scale=1.0, backend=self.backend, site=self.site)[..., :D]  # [N, h, b², D]
        return rearrange(out, "(b i j) h (y x) d -> b (i y) (j x) (h d)", b=B, i=i1 - i0, y=b)

    def _grid(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on the whole token grid with ``blocks_with_halo``: ``[B, h, H, W, D]`` each → ``[B, H, W, C]``."""
        H, W = q.shape[2:4]
        b, h = self.block, self.halo
        w = b + 2 * h
        p = -(-h // b) * b if self.pad_mode == "zeros" else 0  # whole blocks of zeros around the image
        q, k, v = (F.pad(t, (0, 0, p, p, p, p)) for t in (q, k, v))  # [B, h, Hp, Wp, D] each
        Hp, Wp = H + 2 * p, W + 2 * p
        (idx_y, slot_y), (idx_x, slot_x) = ((t.to(q.device) for t in _grid_slots(b, h, n)) for n in (Hp, Wp))
        query_bias = self._relative_logits(q, idx_y, idx_x)  # [B, h, T, 2w]
        key_code = torch.cat([F.one_hot(slot_y, w)[:, None].expand(Hp, Wp, w), F.one_hot(slot_x, w)[None, :].expand(Hp, Wp, w)], dim=-1)
        q, k = fold_bias(q.flatten(2, 3), k.flatten(2, 3), query_bias, key_code.flatten(0, 1), self.head_dim**-0.5)  # [B, h, T, D + 2w]
        out = attend(q, k, v.flatten(2, 3), mask=_mask(b, h, (Hp, Wp)), scale=1.0, backend=self.backend, site=self.site)  # [B, h, T, D]
        return rearrange(out, "b h (y x) d -> b y x (h d)", y=Hp)[:, p : p + H, p : p + W]

    def _relative_logits(self, q: Tensor, idx_y: Tensor, idx_x: Tensor) -> Tensor:
        """``q·r_y`` and ``q·r_x`` for each query's ``w`` window rows and columns.

        ``q`` is ``[..., Y, X, D]``; ``idx_y [Y, w]`` and ``idx_x [X, w]`` are the embedding
        positions of each query row's (column's) window slots. Returns ``[..., Y·X, 2w]``.
        """
        lead = q.dim() - 3
        rel_y = torch.take_along_dim(q @ self.rel_h.T, idx_y.view(*(1,) * lead, -1, 1, idx_y.shape[1]), dim=-1)  # [..., Y, X, w]
        rel_x = torch.take_along_dim(q @ self.rel_w.T, idx_x.view(*(1,) * lead, 1, -1, idx_x.shape[1]), dim=-1)  # [..., Y, X, w]
        return torch.cat([rel_y, rel_x], dim=-1).flatten(-3, -2)
