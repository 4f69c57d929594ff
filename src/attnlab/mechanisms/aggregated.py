"""Paper 58: TransNeXt aggregated attention (pixel-focused attention with learnable tokens).

Every token attends, in ONE softmax, to

- its ``k × k`` neighbourhood (the paper's 3×3, "foveal" vision), each offset with a learned
  per-head bias; keys outside the image are excluded (not shifted inwards as in NATTEN);
- ``P`` pooled tokens ("peripheral" vision): the feature map through a 1×1 projection and GELU,
  adaptive average pooling to ``pool_size``, LayerNorm. Their bias comes from a continuous
  position bias (CPB) MLP of the log-spaced offsets from the query to each pooled bin's centre.

The logits are length-scaled cosine similarities: queries and keys are L2-normalised, a learned
query embedding is added to the queries, and everything is multiplied by
``softplus(t_h) · log(n + P)``, where ``n`` is the query's number of in-image neighbours (``k²``
inside the image, fewer at borders and corners, as in the official code). With
``learnable_tokens`` (the paper's aggregated attention) a query-dependent weight
``q̂ · T_h + b_h`` over the neighbourhood's values is added after the softmax (plain PyTorch,
not softmax attention).

The softmax is one :func:`attnlab.core.attend` call whose batch is (image, ``block × block``
block of queries): keys are the block's halo (every neighbour of its queries) and the pooled
tokens, and a bias ``[B·blocks, h, block², halo + P]`` carries the local position bias (-inf
outside each query's neighbourhood or the image) and the CPB bias. Block slots off the image
have no visible key: their rows are empty, unseen by probes. No ``T × T`` tensor exists.

Cost: besides the attention, the CPB MLP (2 → 512 → heads) is needed on the distinct (dy, dx)
offsets of the image, as in the official code: about ``4·T`` of them when ``H`` and ``W`` are
multiples of ``pool_size`` (the paper's setting, ``pool = H / sr_ratio``), up to ``T·P``
otherwise (133k at 128×128 with pool 7). They are all pairs of ``Uy`` distinct dy and ``Ux``
distinct dx, and the MLP is piecewise linear along each row of pairs, so a sweep over its breaks
gives them in ``O(Uy·512·log 512 + Uy·Ux·heads)`` (``_cpb_table``): at 128×128 the forward took
a third of the time of running the MLP on every pair. The bias of every (query, key) is then one
gather from a table of per-head values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["AggregatedAttention"]


@dataclass(frozen=True)
class _Geometry:
    """Index tables for one image size (cached): they depend on shapes only, never on values."""

    n_local: Tensor  # [H, W] in-image neighbours of each query
    cy: Tensor  # [Uy] distinct log-spaced dy from a query to a pooled bin centre
    cx: Tensor  # [Ux] the same along x; the CPB inputs are all pairs (cy, cx)
    bias_index: Tensor  # [blocks, block², halo + P] column of the bias table (see ``forward``) for each (query, key)


def _in_image(pos: Tensor, size: int) -> Tensor:
    return (pos >= 0) & (pos < size)


@functools.lru_cache(maxsize=16)
def _geometry(H: int, W: int, k: int, r: int, pool: tuple[int, int], device: str) -> _Geometry:
    """The index tables of an ``H × W`` image for neighbourhood ``k``, blocks of ``r × r`` and a pooled grid."""
    p = k // 2
    off = torch.arange(-p, p + 1)
    n_y = _in_image(torch.arange(H)[:, None] + off, H).sum(1)  # [H] in-image neighbours along y
    n_x = _in_image(torch.arange(W)[:, None] + off, W).sum(1)  # [W]
    n_local = (n_y[:, None] * n_x[None, :]).float()  # [H, W]
    # Along one axis, query a of block n sits at n·r + a and halo slot u holds n·r + u - p.
    a, u = torch.arange(r), torch.arange(r + 2 * p)
    dy = u[None, :] - p - a[:, None]  # [r, r+2p] offset from the query to the key

    def axis(size: int) -> Tensor:  # [blocks, r, r+2p]: offset index dy + p, or -1 if too far or query or key off the image
        start = torch.arange(-(-size // r))[:, None] * r  # [blocks, 1]
        ok = _in_image(start + a, size)[:, :, None] & _in_image(start + u - p, size)[:, None, :]  # [blocks, r, r+2p]
        return torch.where((dy.abs() <= p) & ok, dy + p, -1)

    oy, ox = axis(H)[:, None, :, None, :, None], axis(W)[None, :, None, :, None, :]  # broadcast to [ny, nx, r, r, r+2p, r+2p]
    local = torch.where((oy >= 0) & (ox >= 0), oy * k + ox, -1)
    local = rearrange(local, "ny nx a b u w -> (ny nx) (a b) (u w)")
    # CPB inputs: offset from each query to each pooled bin's centre, times 8/(size-1), log-spaced;
    # the distinct values per axis, and for each (query, bin) its entry.
    tables = []
    for size, m in zip((H, W), pool):
        centre = F.adaptive_avg_pool1d(torch.arange(size, dtype=torch.float64)[None], m)[0]  # [m] mean coordinate of each bin
        rel = (torch.arange(size)[:, None] - centre) * 8 / max(size - 1, 1)  # [size, m]
        tables.append(torch.unique(torch.sign(rel) * torch.log2(rel.abs() + 1) / 3, return_inverse=True))  # values, [size, m]
    (vy, iy), (vx, ix) = tables
    pool_index = iy[:, None, :, None] * len(vx) + ix[None, :, None, :]  # [H, W, ph, pw]
    # Bias table columns: k² local offsets, Uy·Ux CPB pairs, and one -inf (not a key; block slots off the image).
    never = k * k + len(vy) * len(vx)
    pool_index = F.pad(pool_index.flatten(2) + k * k, (0, 0, 0, -W % r, 0, -H % r), value=never)  # [Hp, Wp, P]
    pool_index = rearrange(pool_index, "(ny a) (nx b) p -> (ny nx) (a b) p", a=r, b=r)
    bias_index = torch.cat([local.masked_fill(local < 0, never), pool_index], dim=-1)  # [blocks, r², L + P]
    return _Geometry(*(t.to(device) for t in (n_local, vy.float(), vx.float(), bias_index)))


def _relu_grid(alpha: Tensor, u: Tensor, w: Tensor, x: Tensor) -> Tensor:
    """``Σ_c w[h, c] · relu(alpha[i, c] + u[c] · x[j])`` for ``u > 0``: ``[I, J, h]``.

    Unit ``c`` is on where ``x[j] > t[i, c] = -alpha[i, c] / u[c]``. With row ``i``'s breaks
    sorted, the units on at ``x[j]`` are the first ``n[i, j]`` (a search), and their sum is a
    prefix sum of intercepts ``w · alpha`` plus ``x[j]`` times a prefix sum of slopes ``w · u``:
    ``O(I · (C log C + J · h))`` instead of ``O(I · J · C · h)``.
    """
    I, h = alpha.shape[0], w.shape[0]
    t, order = torch.sort(-alpha / u, dim=1)  # [I, C]
    idx = order[:, :, None].expand(-1, -1, h)
    inter = (alpha[:, :, None] * w.T).gather(1, idx)  # [I, C, h] in break order
    slope = (u[:, None] * w.T).expand(I, -1, -1).gather(1, idx)
    zero = inter.new_zeros(I, 1, h)
    inter, slope = (torch.cat([zero, a.cumsum(1)], dim=1) for a in (inter, slope))  # [I, C+1, h]: sums of the first n units
    n = torch.searchsorted(t, x.expand(I, -1).contiguous())  # [I, J] units with t < x
    n = n[:, :, None].expand(-1, -1, h)
    return inter.gather(1, n) + slope.gather(1, n) * x[:, None]  # [I, J, h]


@register("aggregated", paper="58", layout="[B, H, W, C]", time="O(T·((block+k-1)² + P))", memory="O(T·((block+k-1)² + P))")
class AggregatedAttention(nn.Module):
    """Aggregated attention: one softmax over a k×k neighbourhood and pooled tokens, cosine logits scaled by length.

    Paper: 58 (TransNeXt: Robust Foveal Visual Perception for Vision Transformers).
    Shapes: ``x [B, H, W, C]`` (channels-last, like NATTEN) -> ``[B, H, W, C]``.

    Args:
        dim: channels ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        kernel_size: neighbourhood side ``k``, odd (the paper's 3).
        pool_size: pooled grid, int or ``(ph, pw)`` (the paper's 7: 1/32 of a 224 input).
        learnable_tokens: add the learnable-token term ``(q̂ · T + b) · V_local`` (the paper's
            aggregated attention); False gives pixel-focused attention with query embedding.
        qkv_bias: bias in the query and key/value projections.
        block: queries per block side, a performance knob: keys per query are
            ``(block + k - 1)² + P`` where ``k² + P`` are used.
        backend: :func:`attnlab.core.attend` backend.

    Example:
        >>> import torch
        >>> m = AggregatedAttention(32, 2, pool_size=2)
        >>> m(torch.randn(1, 6, 5, 32)).shape
        torch.Size([1, 6, 5, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kernel_size: int = 3,
        pool_size: int | tuple[int, int] = 7,
        learnable_tokens: bool = True,
        qkv_bias: bool = True,
        block: int = 8,
        backend: str = "auto",
    ):
        super().__init__()
        pool = (pool_size, pool_size) if isinstance(pool_size, int) else tuple(pool_size)
        positive_ints(dim=dim, heads=heads, block=block, kernel_size=kernel_size)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the neighbourhood is centred on the query), got kernel_size={kernel_size}")
        if len(pool) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pool):
            raise ValueError(f"pool_size must be a positive integer or a pair of them (ph, pw), got pool_size={pool_size!r}")
        self.dim, self.heads, self.kernel_size, self.pool_size, self.block, self.backend = dim, heads, kernel_size, pool, block, backend
        d, k2 = dim // heads, kernel_size**2
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, d), std=0.02))
        self.temperature = nn.Parameter(torch.full((heads,), math.log(math.expm1(1 / 0.24))))  # softplus(t) = 1/0.24
        self.local_bias = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, k2), std=0.0004))
        self.sr = nn.Linear(dim, dim)  # the paper's 1×1 convolution, channels-last
        self.norm = nn.LayerNorm(dim)
        self.cpb = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads))
        if learnable_tokens:
            self.learnable_tokens = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, d, k2), std=0.02))
            self.learnable_bias = nn.Parameter(torch.zeros(heads, k2))
        else:
            self.learnable_tokens = self.learnable_bias = None
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="aggregated", num_heads=heads, num_kv_heads=heads)

    def _blocks(self, t: Tensor) -> Tensor:
        """``[B, h, H, W, d]`` -> ``[B·blocks, h, block², d]``, zero-padded to whole blocks."""
        H, W, r = t.shape[2], t.shape[3], self.block
        t = F.pad(t, (0, 0, 0, -W % r, 0, -H % r))
        return rearrange(t, "b h (ny a) (nx c) d -> (b ny nx) h (a c) d", a=r, c=r)

    def _halos(self, t: Tensor) -> Tensor:
        """``[B, h, H, W, d]`` -> ``[B·blocks, h, (block+k-1)², d]``: each block's neighbours."""
        H, W, r, p = t.shape[2], t.shape[3], self.block, self.kernel_size // 2
        t = F.pad(t, (0, 0, p, p + (-W % r), p, p + (-H % r)))  # [B, h, Hp+2p, Wp+2p, d]
        t = t.unfold(2, r + 2 * p, r).unfold(3, r + 2 * p, r)  # [B, h, ny, nx, d, r+2p, r+2p]
        return rearrange(t, "b h ny nx d u w -> (b ny nx) h (u w) d")

    def _cpb_table(self, cy: Tensor, cx: Tensor) -> Tensor:
        """The CPB MLP on every pair ``(cy[i], cx[j])``: ``[Uy, Ux, heads]``, without its hidden layer.

        Hidden unit ``c`` is ``relu(α[i, c] + u[c] · cx[j])`` with ``α = cy · W1[:, 0] + b1`` and
        ``u = W1[:, 1]``, so along a row ``i`` the MLP is piecewise linear in ``cx``, with a break
        where each unit switches on. :func:`_relu_grid` sums the active units by a sweep over the
        sorted breaks. Equal to the MLP up to rounding (float64 inside), with its gradients; the
        hidden ``[Uy · Ux, 512]`` layer (133k pairs at 128×128 with pool 7) never exists.
        """
        first, _, last = self.cpb
        dt = torch.float64
        w0, u = first.weight[:, 0].to(dt), first.weight[:, 1].to(dt)  # [512] each
        alpha = cy.to(dt)[:, None] * w0 + first.bias.to(dt)  # [Uy, 512]
        w = last.weight.to(dt)  # [h, 512]
        x = cx.to(dt)
        pos, neg, flat = u > 0, u < 0, u == 0
        out = _relu_grid(alpha[:, pos], u[pos], w[:, pos], x) + _relu_grid(alpha[:, neg], -u[neg], w[:, neg], -x)
        on = (alpha[:, flat] > 0).to(dt)  # [Uy, C0] units with u = 0: on or off for the whole row
        inter, slope = (on * alpha[:, flat]) @ w[:, flat].T, on @ (u[flat, None] * w[:, flat].T)  # [Uy, h]; u · x keeps u's gradient
        out = out + inter[:, None] + slope[:, None] * x[:, None] + last.bias.to(dt)
        return out.to(last.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C = dim = {self.dim}, got shape {tuple(x.shape)}")
        B, H, W, C = x.shape
        h, K = self.heads, self.kernel_size
        P = self.pool_size[0] * self.pool_size[1]
        g = _geometry(H, W, K, self.block, self.pool_size, str(x.device))
        q = F.normalize(rearrange(self.q(x), "b y x (h d) -> b h y x d", h=h), dim=-1)  # [B, h, H, W, d]
        k, v = rearrange(self.kv(x), "b y x (two h d) -> two b h y x d", two=2, h=h)  # [B, h, H, W, d] each
        k = F.normalize(k, dim=-1)
        scale = F.softplus(self.temperature).view(h, 1, 1, 1) * torch.log(g.n_local + P).to(x.dtype)[..., None]  # [h, H, W, 1]
        qs = (q + self.query_embedding.view(h, 1, 1, -1)) * scale  # [B, h, H, W, d]
        pooled = F.adaptive_avg_pool2d(F.gelu(self.sr(x)).permute(0, 3, 1, 2), self.pool_size)  # [B, C, ph, pw]
        pooled = self.norm(rearrange(pooled, "b c y x -> b (y x) c"))  # [B, P, C]
        kp, vp = rearrange(self.kv(pooled), "b n (two h d) -> two b h n d", two=2, h=h)  # [B, h, P, d] each
        nb = g.bias_index.shape[0]
        kp, vp = (t.unsqueeze(1).expand(B, nb, h, P, -1).flatten(0, 1) for t in (F.normalize(kp, dim=-1), vp))  # [B·blocks, h, P, d]
        keys = torch.cat([self._halos(k), kp], dim=2)  # [B·blocks, h, L + P, d], L = (block + k - 1)²
        values = torch.cat([self._halos(v), vp], dim=2)
        cpb = self._cpb_table(g.cy.to(x.dtype), g.cx.to(x.dtype)).flatten(0, 1).T  # [h, Uy·Ux]
        table = torch.cat([self.local_bias.to(x.dtype), cpb, cpb.new_full((h, 1), float("-inf"))], dim=1)  # [h, k² + Uy·Ux + 1]
        bias = table[:, g.bias_index].transpose(0, 1)  # [blocks, h, r², L + P], one gather
        bias = bias.expand(B, *bias.shape).flatten(0, 1)  # [B·blocks, h, r², L + P] (a view when B = 1)
        out = attend(self._blocks(qs), keys, values, bias=bias, scale=1.0, backend=self.backend, site=self.site)  # [B·blocks, h, r², d]
        r = self.block
        out = rearrange(out, "(b ny nx) h (a c) d -> b h (ny a) (nx c) d", b=B, ny=-(-H // r), a=r)[:, :, :H, :W]  # [B, h, H, W, d]
        if self.learnable_tokens is not None:
            weight = torch.einsum("bhyxd,hdo->bhyxo", q, self.learnable_tokens) + self.learnable_bias.view(h, 1, 1, -1)  # [B, h, H, W, k²]
            vpad = F.pad(v, (0, 0, K // 2, K // 2, K // 2, K // 2))  # [B, h, H+K-1, W+K-1, d]; zeros off the image
            for o in range(K * K):  # offset o = (dy + K//2)·K + (dx + K//2)
                dy, dx = divmod(o, K)
                out = out + weight[..., o, None] * vpad[:, :, dy : dy + H, dx : dx + W]
        return self.proj(rearrange(out, "b h y x d -> b y x (h d)"))
