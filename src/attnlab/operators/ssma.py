"""Paper 25: SSMA fusion, a self-supervised gate that weighs two modalities' feature maps position by position.

AdapNet++'s self-supervised model adaptation block concatenates the two modalities' features,
computes a gate from the concatenation with a bottleneck of two 3×3 convolutions,

    X = [X_a ; X_b],    s = σ(W₂ ∗ ReLU(W₁ ∗ X)) ∈ (0, 1)^{2C×H×W},    X̂ = s ⊙ X,

(``W₁`` reduces ``2C`` channels by the bottleneck ratio η = 16) and fuses ``X̂`` with a 3×3
convolution and batch norm back to ``C`` channels. "Self-supervised": nothing supervises the
gate but the task loss, so a modality that is noisy at a position is turned down there. With
the gate fixed at 1 the block is the plain stream: convolution and batch norm of the
concatenation. :func:`noisy_modalities` draws the check's data: two views of one map, one of
them replaced by noise in each sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnlab.operators import register

__all__ = ["SSMAFusion", "noisy_modalities"]


@register("ssma_fusion", paper="25")
class SSMAFusion(nn.Module):
    """Fuse two modalities' feature maps through a sigmoid gate computed from both.

    Paper: 25, AdapNet++ (Self-Supervised Model Adaptation for Multimodal Semantic Segmentation).

    Args:
        channels: ``C``, channels of each modality and of the output.
        reduction: bottleneck ratio η: the gate's hidden layer has ``max(1, 2C // η)`` channels (default 16).
        kernel_size: of the gate's and the fusion's convolutions (default 3, padded to keep ``H×W``).

    Shapes:
        a, b ``[B, C, H, W]`` (channels-first, as convolutions take them) → fused ``[B, C, H, W]``;
        :meth:`gate` ``[B, 2C, H, W]`` (channels ``:C`` weigh ``a``, ``C:`` weigh ``b``).

    Example:
        >>> m = SSMAFusion(32)
        >>> m(torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 3):
        super().__init__()
        for name, v in (("channels", channels), ("reduction", reduction), ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the maps keep their size), got kernel_size={kernel_size}")
        self.channels = channels
        hidden, pad = max(1, 2 * channels // reduction), kernel_size // 2
        self.squeeze = nn.Conv2d(2 * channels, hidden, kernel_size, padding=pad)  # W₁
        self.excite = nn.Conv2d(hidden, 2 * channels, kernel_size, padding=pad)  # W₂
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, kernel_size, padding=pad, bias=False), nn.BatchNorm2d(channels))

    def _cat(self, a: Tensor, b: Tensor) -> Tensor:
        C = self.channels
        if a.dim() != 4 or a.shape[1] != C or a.shape != b.shape:
            raise ValueError(
                f"a and b must both be [B, C, H, W] with C={C} (channels-first), got shapes {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return torch.cat([a, b], dim=1)  # (B, 2C, H, W)

    def gate(self, a: Tensor, b: Tensor) -> Tensor:
        """``s = σ(W₂ ∗ ReLU(W₁ ∗ [a; b]))`` ``[B, 2C, H, W]``."""
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(self._cat(a, b)))))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x = self._cat(a, b)  # (B, 2C, H, W)
        s = torch.sigmoid(self.excite(torch.relu(self.squeeze(x))))  # (B, 2C, H, W)
        return self.fuse(s * x)  # (B, C, H, W)


def noisy_modalities(
    n: int, *, channels: int = 16, size: int = 8, noise: float = 3.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A smooth target map seen by two modalities; in each sample one of them is buried in noise.

    Both views are ``z`` copied to every channel plus N(0, 0.1²); the noisy one (``a`` or ``b`` with
    probability 1/2) is replaced by N(0, ``noise``²).

    Returns:
        a, b ``[n, channels, size, size]``, target z ``[n, 1, size, size]``, noisy_a ``[n]`` bool.
    """
    z = F.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=generator), 3, 1)  # (n, 1, size, size)
    noisy_a = torch.rand(n, generator=generator) < 0.5  # (n,)
    views = [z.expand(n, channels, size, size) + 0.1 * torch.randn(n, channels, size, size, generator=generator) for _ in range(2)]
    junk = noise * torch.randn(n, channels, size, size, generator=generator)
    which = noisy_a[:, None, None, None]
    return torch.where(which, junk, views[0]), torch.where(which, views[1], junk), z, noisy_a
