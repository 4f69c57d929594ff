"""Paper 43: position and channel attention modules (PAM, CAM) of multi-scale self-guided attention.

The guided attention modules of Sinha & Dolz, taken from DANet, on a feature map ``X`` with ``N``
positions and ``C`` channels:

- PAM, spatial self-attention: ``E = X + γ_p · softmax(Q Kᵀ) V`` with ``Q, K`` 1×1 projections
  to ``C / reduction`` channels (reduction 8), ``V`` a 1×1 projection to ``C``, and no
  ``1/√d`` scaling (as in the authors' code).
- CAM, channel self-attention: ``E = X + γ_c · softmax(max(S) − S) X`` over the ``C × C``
  affinity ``S = X Xᵀ`` (``X`` read as ``C × N``: channels are the tokens, positions their
  features), no parameters besides ``γ_c``. Subtracting ``S`` from its row maximum shifts each
  row by a constant, so the softmax equals ``softmax(−S)``: channels attend most to the channels
  least like them.

``γ_p = γ_c = 0`` at init, so both modules start as the identity. The paper runs PAM and CAM in
parallel on the same features and sums their outputs; :class:`PamCam` does that with one residual,
``X + γ_p·PAM + γ_c·CAM``, so the combined block is also the identity at init. Both attentions
run through :func:`attnlab.core.attend`, at sites ``pam`` and ``cam``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register

__all__ = ["ChannelAttention", "PamCam", "PositionAttention"]


def _check_sizes(dim: int, heads: int) -> None:
    if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
        raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")


def _check_grid(x: Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f"x must be [B, H, W, C] (channels-last) with C={dim}, got shape {tuple(x.shape)}")


class PositionAttention(nn.Module):
    """PAM: spatial self-attention over the ``H·W`` positions with a γ-gated residual (γ = 0 at init).

    Paper: 43, Multi-scale self-guided attention for medical image segmentation (PAM from DANet).

    Args:
        dim: channels ``C``.
        heads: heads (paper: 1); ``dim // reduction`` and ``dim`` must be divisible by it.
        reduction: query/key channels are ``dim // reduction`` (paper: 8).
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) → ``[B, Hg, Wg, C]``.

    Example:
        >>> PositionAttention(16)(torch.randn(2, 4, 4, 16)).shape
        torch.Size([2, 4, 4, 16])
    """

    def __init__(self, dim: int, heads: int = 1, *, reduction: int = 8, backend: str = "auto"):
        super().__init__()
        _check_sizes(dim, heads)
        if not isinstance(reduction, int) or reduction <= 0 or dim // reduction == 0:
            raise ValueError(f"reduction must be a positive integer at most dim, got reduction={reduction!r}, dim={dim} (paper: 8)")
        inner = dim // reduction
        if inner % heads or dim % heads:
            raise ValueError(f"dim and dim // reduction must be divisible by heads, got dim={dim}, dim // reduction={inner}, heads={heads}")
        self.dim, self.heads, self.backend = dim, heads, backend
        self.query = nn.Linear(dim, inner)
        self.key = nn.Linear(dim, inner)
        self.value = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.site = Site(name="pam", num_heads=heads, num_kv_heads=heads)

    def attention(self, x: Tensor) -> Tensor:
        """``softmax(Q Kᵀ) V`` over positions, without γ and residual: ``[B, Hg, Wg, C]``."""
        _check_grid(x, self.dim)
        Hg = x.shape[1]
        q, k, v = (rearrange(f(x), "b y x (h d) -> b h (y x) d", h=self.heads) for f in (self.query, self.key, self.value))
        out = attend(q, k, v, scale=1.0, backend=self.backend, site=self.site)  # [B, H, T, C/H]
        return rearrange(out, "b h (y x) d -> b y x (h d)", y=Hg)  # [B, Hg, Wg, C]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.attention(x)


class ChannelAttention(nn.Module):
    """CAM: channel self-attention ``softmax(max(S) − S) X`` over the ``C × C`` affinity, γ-gated (γ = 0 at init).

    Paper: 43, Multi-scale self-guided attention for medical image segmentation (CAM from DANet).

    Args:
        dim: channels ``C`` (checked against the input).
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) → ``[B, Hg, Wg, C]``.

    Example:
        >>> ChannelAttention(16)(torch.randn(2, 4, 4, 16)).shape
        torch.Size([2, 4, 4, 16])
    """

    def __init__(self, dim: int, *, backend: str = "auto"):
        super().__init__()
        _check_sizes(dim, 1)
        self.dim, self.backend = dim, backend
        self.gamma = nn.Parameter(torch.zeros(1))
        self.site = Site(name="cam", num_heads=1, num_kv_heads=1)

    def attention(self, x: Tensor) -> Tensor:
        """``softmax(−X Xᵀ) X`` with ``X`` as ``C × N`` (channels as tokens), without γ and residual: ``[B, Hg, Wg, C]``."""
        _check_grid(x, self.dim)
        Hg = x.shape[1]
        f = rearrange(x, "b y x c -> b 1 c (y x)")  # [B, 1, C, T]: channel tokens, positions as features
        out = attend(-f, f, f, scale=1.0, backend=self.backend, site=self.site)  # [B, 1, C, T]; softmax(−S) = softmax(max S − S)
        return rearrange(out, "b 1 c (y x) -> b y x c", y=Hg)  # [B, Hg, Wg, C]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.attention(x)


@register("pam_cam", paper="43", layout="[B, H, W, C]", time="O(T²·C + T·C²)", memory="O(T² + C²)")
class PamCam(nn.Module):
    """Dual guided attention: ``X + γ_p · PAM(X) + γ_c · CAM(X)``, the identity at init (γ = 0).

    Paper: 43, Multi-scale self-guided attention for medical image segmentation.

    Args:
        dim: channels ``C``.
        heads: PAM heads (paper: 1).
        reduction: PAM query/key channels are ``dim // reduction`` (paper: 8).
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) → ``[B, Hg, Wg, C]``.

    Example:
        >>> PamCam(16, 1)(torch.randn(2, 4, 4, 16)).shape
        torch.Size([2, 4, 4, 16])
    """

    def __init__(self, dim: int, heads: int = 1, *, reduction: int = 8, backend: str = "auto"):
        super().__init__()
        self.pam = PositionAttention(dim, heads, reduction=reduction, backend=backend)
        self.cam = ChannelAttention(dim, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pam.gamma * self.pam.attention(x) + self.cam.gamma * self.cam.attention(x)
