"""Paper 70: CrossFormer's long short distance attention (LSDA), dynamic position bias and cross-scale embedding.

- **SDA** (short distance): tokens attend within ``group × group`` windows [G=7]
  (:func:`attnlab.core.masks.blocks_with_halo` with no halo).
- **LDA** (long distance): tokens ``interval`` apart on both axes form a group
  (:func:`attnlab.core.masks.strided_groups`); the paper's interval is ``S / G`` (8 on a 56×56
  map). CrossFormer alternates the two in consecutive blocks: here ``kind="sda"`` or ``"lda"``.
- **DPB** (dynamic position bias): an MLP maps a query-minus-key offset ``(Δy, Δx)``, measured in
  the window (SDA) or in the group's own grid (LDA), to one bias per head, so any group size
  works.
- **CEL** (cross-scale embedding layer, :class:`CrossScaleEmbedding`): convolutions with several
  kernel sizes and one stride, outputs concatenated along channels.

A grid that is not a multiple of the window (SDA) or interval (LDA) is padded to one and the
padded keys are masked (CrossFormer++), i.e. the last windows or groups are smaller.

Two paths compute the same numbers (the tests hold them equal):

- **windows** (when nothing is attached at the site): the windows or groups are gathered into
  the batch and ``attend`` runs on ``[B · groups, heads, G², D]`` with the ``[heads, G², G²]``
  DPB bias: the paper's own layout, and 2-3× faster than the grid path on CPU at 64×64.
- **grid** (when probes or edits are attached, :func:`attnlab.core.attach`): ``attend`` runs on
  the whole token grid with the mask above, so probes and edits see image positions; the bias
  is then folded into ``q·k`` as one extra dimension per group slot
  (:func:`attnlab.mechanisms.neighborhood.fold_bias`), never a ``[T, T]`` tensor.
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
from attnlab.mechanisms._options import positive_ints
from attnlab.mechanisms.neighborhood import fold_bias

__all__ = ["CrossFormerAttention", "CrossScaleEmbedding", "DynamicPosBias"]

KINDS = ("sda", "lda")


class DynamicPosBias(nn.Module):
    """Paper 70: an MLP from relative offsets ``(Δy, Δx)`` to one attention bias per head.

    ``Linear(2, d)`` then three blocks of ``LayerNorm, ReLU, Linear`` (the last one to ``heads``),
    CrossFormer's non-residual DPB.

    Shapes: ``offsets [N, 2]`` → ``[N, heads]``.

    Example:
        >>> DynamicPosBias(4, 8)(torch.tensor([[0.0, 1.0], [-2.0, 3.0]])).shape
        torch.Size([2, 4])
    """

    def __init__(self, heads: int, pos_dim: int):
        super().__init__()
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, heads))

    def forward(self, offsets: Tensor) -> Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


@functools.lru_cache(maxsize=16)
def _grid_mask(kind: str, side: int, H: int, W: int) -> M.Mask:
    """The mask on the grid padded to a multiple of ``side``, padded keys excluded (shared by every layer, so its plan is built once)."""
    Hp, Wp = -(-H // side) * side, -(-W // side) * side
    mask = M.blocks_with_halo(side, 0, shape=(Hp, Wp)) if kind == "sda" else M.strided_groups(side, shape=(Hp, Wp))
    if (Hp, Wp) != (H, W):
        inside = ((torch.arange(Hp) < H)[:, None] & (torch.arange(Wp) < W)[None, :]).flatten()  # [T]
        mask = mask & M.Mask(lambda b, h, q_idx, kv_idx: inside.to(kv_idx.device)[kv_idx], f"inside({H}, {W})")
    return mask


@register("crossformer", paper="70", layout="[B, H, W, C]", time="O(T·G²)", memory="O(T)")
class CrossFormerAttention(nn.Module):
    """CrossFormer LSDA: short-distance window attention or long-distance strided-group attention, with DPB.

    Paper: 70 (CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention).
    Shapes: ``x [B, H, W, C]`` (channels-last) → ``[B, H, W, C]``.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        kind: ``"sda"`` (``group × group`` windows) or ``"lda"`` (tokens ``interval`` apart);
            CrossFormer alternates them block by block.
        group: SDA window side ``G`` (paper: 7).
        interval: LDA sampling interval ``I`` (paper: ``S / G``, 8 on the first stage's 56×56).
        qkv_bias: bias in the q, k, v projection (paper: True).
        pos_dim: DPB hidden width; default ``dim // 16`` as in CrossFormer, at least 4.
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = CrossFormerAttention(32, 4, kind="lda", interval=3)
        >>> m(torch.randn(2, 9, 7, 32)).shape
        torch.Size([2, 9, 7, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kind: str = "sda",
        group: int = 7,
        interval: int = 8,
        qkv_bias: bool = True,
        pos_dim: int | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={kind!r}")
        positive_ints(group=group, interval=interval, pos_dim=4 if pos_dim is None else pos_dim)
        self.dim, self.heads, self.kind, self.group, self.interval, self.backend = dim, heads, kind, group, interval, backend
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dpb = DynamicPosBias(heads, pos_dim or max(4, dim // 16))
        self.site = Site(name="crossformer", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, height, width, {self.dim}] (channels-last), got shape {tuple(x.shape)}")
        _, H, W, _ = x.shape
        if self.kind == "lda" and (self.interval > H or self.interval > W):
            raise ValueError(f"interval must not exceed the grid: got interval={self.interval} for a {H}x{W} grid; use a smaller interval")
        side = self.group if self.kind == "sda" else self.interval
        Hp, Wp = -(-H // side) * side, -(-W // side) * side
        qkv = rearrange(self.qkv(x), "b y x (three h d) -> three b h y x d", three=3, h=self.heads)  # [B, h, H, W, D] each
        q, k, v = F.pad(qkv, (0, 0, 0, Wp - W, 0, Hp - H))  # [B, h, Hp, Wp, D] each
        observed = any(attached())  # probes or edits want image positions
        out = self._grid(q, k, v, H, W) if observed else self._windows(q, k, v, H, W)  # [B, Hp, Wp, C]
        return self.proj(out[:, :H, :W])

    def _groups(self, Hp: int, Wp: int) -> tuple[str, dict[str, int], int, int]:
        """How the padded grid splits: an einops pattern for its axes, its sizes, and a group's extent ``gh × gw``.

        SDA window ``(i, j)`` holds rows ``i·G + y``; LDA group ``(i, j)`` holds rows ``y·I + i``.
        """
        if self.kind == "sda":
            G = self.group
            return "(i y) (j x)", {"i": Hp // G, "j": Wp // G, "y": G, "x": G}, G, G
        I = self.interval
        return "(y i) (x j)", {"i": I, "j": I, "y": Hp // I, "x": Wp // I}, Hp // I, Wp // I

    def _group_bias(self, gh: int, gw: int, like: Tensor) -> Tensor:
        """DPB for every (query, key) pair of a ``gh × gw`` window or group: ``[h, gh·gw, gh·gw]``."""
        dev = like.device
        dy, dx = torch.meshgrid(torch.arange(1 - gh, gh, device=dev), torch.arange(1 - gw, gw, device=dev), indexing="ij")
        table = self.dpb(torch.stack([dy, dx], -1).flatten(0, 1).to(like.dtype))  # [(2gh-1)(2gw-1), h]
        py, px = (t.flatten() for t in torch.meshgrid(torch.arange(gh, device=dev), torch.arange(gw, device=dev), indexing="ij"))
        index = (py[:, None] - py[None, :] + gh - 1) * (2 * gw - 1) + (px[:, None] - px[None, :] + gw - 1)  # query minus key
        return table[index].permute(2, 0, 1)  # [h, gh·gw, gh·gw]

    def _windows(self, q: Tensor, k: Tensor, v: Tensor, H: int, W: int) -> Tensor:
        """Windows or groups gathered into the batch: ``[B, h, Hp, Wp, D]`` each → ``[B, Hp, Wp, C]``."""
        B, _, Hp, Wp, _ = q.shape
        axes, sizes, gh, gw = self._groups(Hp, Wp)
        q, k, v = (rearrange(t, f"b h {axes} d -> (b i j) h (y x) d", **sizes) for t in (q, k, v))  # [N, h, gh·gw, D], N = B·groups
        mask = None
        if (Hp, Wp) != (H, W):
            inside = (torch.arange(Hp, device=q.device) < H)[:, None] & (torch.arange(Wp, device=q.device) < W)[None, :]
            mask = rearrange(inside, f"{axes} -> (i j) 1 1 (y x)", **sizes).repeat(B, 1, 1, 1)  # [N, 1, 1, gh·gw]
        bias = self._group_bias(gh, gw, q)[None]  # [1, h, gh·gw, gh·gw]
        out = attend(q, k, v, mask=mask, bias=bias, backend=self.backend, site=self.site)  # [N, h, gh·gw, D]
        return rearrange(out, f"(b i j) h (y x) d -> b {axes} (h d)", b=B, **sizes)

    def _grid(self, q: Tensor, k: Tensor, v: Tensor, H: int, W: int) -> Tensor:
        """The whole token grid with the mask: ``[B, h, Hp, Wp, D]`` each → ``[B, Hp, Wp, C]``."""
        Hp, Wp = q.shape[2:4]
        axes, sizes, gh, gw = self._groups(Hp, Wp)
        in_group = torch.arange(gh * gw, device=q.device).view(1, 1, gh, gw).expand(sizes["i"], sizes["j"], gh, gw)
        slot = rearrange(in_group, f"i j y x -> {axes}").flatten()  # [T] each token's position inside its group
        query_bias = self._group_bias(gh, gw, q)[:, slot][None]  # [1, h, T, gh·gw]: each query's bias to each group slot
        q, k = fold_bias(
            q.flatten(2, 3), k.flatten(2, 3), query_bias, F.one_hot(slot, gh * gw), self.head_dim**-0.5
        )  # [B, h, T, D + gh·gw]
        mask = _grid_mask(self.kind, self.group if self.kind == "sda" else self.interval, H, W)
        out = attend(q, k, v.flatten(2, 3), mask=mask, scale=1.0, backend=self.backend, site=self.site)  # [B, h, T, D]
        return rearrange(out, "b h (y x) d -> b y x (h d)", y=Hp)


class CrossScaleEmbedding(nn.Module):
    """Paper 70: cross-scale embedding layer (CEL): one stride, several kernel sizes, outputs concatenated.

    Kernel ``i`` (sorted ascending) gets ``dim / 2^(i+1)`` channels, the last one the remainder
    ``dim / 2^(n-1)``, as in CrossFormer (kernels 4, 8, 16, 32 → dim/2, dim/4, dim/8, dim/8);
    padding ``(kernel - stride) / 2`` keeps every output the same size. CrossFormer's patch
    embedding uses kernels (4, 8, 16, 32) with stride 4; its patch merging (2, 4) with stride 2.

    Shapes: ``x [B, H, W, in_dim]`` (channels-last) → ``[B, H/stride, W/stride, dim]``.

    Args:
        in_dim: input channels.
        dim: output channels; must be divisible by ``2^(len(kernels) - 1)``.
        kernels: kernel sizes; each minus the stride must be even and non-negative.
        stride: default the smallest kernel.
        norm: LayerNorm on the output (CrossFormer's ``patch_norm``).

    Example:
        >>> CrossScaleEmbedding(3, 64)(torch.randn(2, 32, 32, 3)).shape
        torch.Size([2, 8, 8, 64])
    """

    def __init__(self, in_dim: int, dim: int, *, kernels: tuple[int, ...] = (4, 8, 16, 32), stride: int | None = None, norm: bool = True):
        super().__init__()
        kernels = tuple(sorted(kernels))
        stride = kernels[0] if stride is None else stride
        n = len(kernels)
        if n == 0 or dim % 2 ** (n - 1):
            raise ValueError(f"dim must be divisible by 2^(len(kernels) - 1) = {2 ** max(n - 1, 0)}, got dim={dim}, kernels={kernels}")
        for k in kernels:
            if k < stride or (k - stride) % 2:
                raise ValueError(f"every kernel must be >= stride with an even difference, got kernels={kernels}, stride={stride}")
        dims = [dim // 2 ** (i + 1) for i in range(n - 1)] + [dim // 2 ** (n - 1)]
        self.convs = nn.ModuleList(nn.Conv2d(in_dim, d, k, stride=stride, padding=(k - stride) // 2) for d, k in zip(dims, kernels))
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # [B, in_dim, H, W]
        out = torch.cat([conv(x) for conv in self.convs], dim=1)  # [B, dim, H/stride, W/stride]
        return self.norm(out.permute(0, 2, 3, 1))  # [B, H/stride, W/stride, dim]
