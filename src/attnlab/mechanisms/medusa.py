"""Paper 46: MEDUSA, one shared self-attention body with multi-scale heads that gate a network's stages.

Instead of a small, isolated attention module at every stage of an encoder-decoder, MEDUSA has a
"single body, multi-scale heads": one higher-capacity self-attention over the input, whose output
feeds one light head per scale, and each head's map gates the feature map of its stage:

    a   = SelfAttention(x)                                  (the shared body, global context)
    g_s = σ(W_s · resize(a, H_s × W_s))   ∈ (0, 1)^{C_s}    (head s: resize, then a 1×1 projection)
    out_s = f_s ⊙ g_s

Here the body is multi-head softmax self-attention over the ``H·W`` tokens, through
:func:`attnlab.core.attend` at ``self.site``; a head downsamples by average pooling (or upsamples
bilinearly for a map larger than ``x``) and projects ``C → C_s`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register

__all__ = ["Medusa"]


def _resize(a: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, C, Hg, Wg]`` to ``[B, C, *size]``: average pooling down, bilinear interpolation up."""
    if size[0] <= a.shape[-2] and size[1] <= a.shape[-1]:
        return F.adaptive_avg_pool2d(a, size)
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False)


@register("medusa", paper="46", layout="[B, H, W, C]", time="O(T²)", memory="O(T)")
class Medusa(nn.Module):
    """MEDUSA: a shared self-attention whose output, resized to every scale, gates that scale's feature map.

    Paper: 46, MEDUSA: Multi-scale Encoder-Decoder Self-Attention Deep Neural Network Architecture
    for Medical Image Analysis.

    Args:
        dim: channels ``C`` of the input ``x``.
        heads: heads of the shared self-attention; ``dim`` must be divisible by it.
        feature_dims: channels ``C_s`` of the feature maps to gate, one per scale; default four
            maps of ``dim`` channels.
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) and features ``[[B, H_s, W_s, C_s], ...]`` → the gated
        features, same shapes.

    Example:
        >>> m = Medusa(dim=8, heads=2, feature_dims=(4, 16))
        >>> out = m(torch.randn(2, 8, 8, 8), [torch.randn(2, 16, 16, 4), torch.randn(2, 4, 4, 16)])
        >>> [tuple(o.shape) for o in out]
        [(2, 16, 16, 4), (2, 4, 4, 16)]
    """

    def __init__(self, dim: int, heads: int, *, feature_dims: Sequence[int] | None = None, backend: str = "auto"):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        feature_dims = (dim,) * 4 if feature_dims is None else tuple(feature_dims)
        if not feature_dims or not all(isinstance(c, int) and c > 0 for c in feature_dims):
            raise ValueError(f"feature_dims must be a non-empty sequence of positive channel counts, got feature_dims={feature_dims!r}")
        self.dim, self.heads, self.backend, self.feature_dims = dim, heads, backend, feature_dims
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gates = nn.ModuleList(nn.Linear(dim, c) for c in feature_dims)
        self.site = Site(name="medusa", num_heads=heads, num_kv_heads=heads)

    def body(self, x: Tensor) -> Tensor:
        """The shared self-attention ``[B, Hg, Wg, C]`` → ``[B, Hg, Wg, C]``."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C={self.dim}, got shape {tuple(x.shape)}")
        Hg = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b y x (three h d) -> three b h (y x) d", three=3, h=self.heads)  # [B, H, T, D] each
        out = attend(q, k, v, backend=self.backend, site=self.site)  # [B, H, T, D]
        return self.proj(rearrange(out, "b h (y x) d -> b y x (h d)", y=Hg))  # [B, Hg, Wg, C]

    def gate_maps(self, x: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Gates ``[B, H_s, W_s, C_s]`` in ``(0, 1)``, one per scale."""
        a = rearrange(self.body(x), "b y x c -> b c y x")  # [B, C, Hg, Wg]
        return [
            torch.sigmoid(proj(rearrange(_resize(a, tuple(size)), "b c y x -> b y x c")))  # [B, H_s, W_s, C_s]
            for proj, size in zip(self.gates, sizes)
        ]

    def forward(self, x: Tensor, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.feature_dims):
            raise ValueError(f"expected {len(self.feature_dims)} feature maps (feature_dims={self.feature_dims}), got {len(features)}")
        for s, (f, c) in enumerate(zip(features, self.feature_dims)):
            if f.dim() != 4 or f.shape[0] != x.shape[0] or f.shape[-1] != c:
                raise ValueError(f"features[{s}] must be [B, H, W, C] with B={x.shape[0]}, C={c}, got shape {tuple(f.shape)}")
        gates = self.gate_maps(x, [tuple(f.shape[1:3]) for f in features])
        return [f * g for f, g in zip(features, gates)]
