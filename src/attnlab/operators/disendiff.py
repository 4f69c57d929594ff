"""Paper 39 (DisenDiff): attention calibration, binding and separation losses on smoothed soft-IoU of maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.operators import register


def smooth(maps: Tensor, kernel: int = 3, sigma: float = 0.5) -> Tensor:
    """``maps`` ``[..., h, w]`` blurred by a normalised Gaussian of ``kernel × kernel`` (reflect padding)."""
    if kernel % 2 == 0 or kernel < 1:
        raise ValueError(f"smooth: kernel must be a positive odd size, got kernel={kernel}")
    x = torch.arange(kernel, dtype=maps.dtype, device=maps.device) - kernel // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = torch.outer(g, g) / g.sum() ** 2  # [k, k]
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w)  # [M, 1, h, w]
    out = F.conv2d(F.pad(flat, [kernel // 2] * 4, mode="reflect"), g.view(1, 1, kernel, kernel))
    return out.view(maps.shape)


def soft_iou(a: Tensor, b: Tensor) -> Tensor:
    """Soft IoU of maps ``[..., h, w]`` scaled to max 1: ``Σ a·b / Σ (a + b − a·b)``, ``[...]``."""
    a = a / a.flatten(-2).amax(-1)[..., None, None].clamp_min(1e-12)
    b = b / b.flatten(-2).amax(-1)[..., None, None].clamp_min(1e-12)
    inter = (a * b).flatten(-2).sum(-1)
    return inter / (a + b - a * b).flatten(-2).sum(-1).clamp_min(1e-12)


@register("disendiff_binding", paper="39")
def disendiff_binding(classes: Tensor, modifiers: Tensor, kernel: int = 3, sigma: float = 0.5) -> Tensor:
    """Each class token's map should cover its modifier's: ``Σ_i 1 − softIoU(smooth(C_i), smooth(M_i))``.

    Paper: 39, DisenDiff attention calibration, binding loss (a class word and the learnable
    token or attribute bound to it attend to the same pixels).

    Args:
        classes, modifiers: ``[..., N, h, w]`` maps of ``N`` class tokens and their modifiers.
        kernel, sigma: the Gaussian smoothing applied first.

    Returns:
        ``[...]`` the loss.
    """
    if classes.shape != modifiers.shape:
        raise ValueError(f"disendiff_binding: classes {tuple(classes.shape)} and modifiers {tuple(modifiers.shape)} must have one shape")
    return (1 - soft_iou(smooth(classes, kernel, sigma), smooth(modifiers, kernel, sigma))).sum(-1)


@register("disendiff_separation", paper="39")
def disendiff_separation(maps: Tensor, kernel: int = 3, sigma: float = 0.5) -> Tensor:
    """Different classes should not share pixels: ``Σ_{i<j} softIoU(smooth(C_i), smooth(C_j))``.

    Paper: 39, DisenDiff attention calibration, separation loss.

    Args:
        maps: ``[..., N, h, w]`` maps of ``N >= 2`` class tokens.
        kernel, sigma: the Gaussian smoothing applied first.

    Returns:
        ``[...]`` the loss.

    Example:
        >>> a = torch.zeros(2, 8, 8); a[0, :, :3] = 1; a[1, :, 5:] = 1
        >>> float(disendiff_separation(a)) < 1e-6
        True
    """
    N = maps.shape[-3] if maps.dim() >= 3 else 0
    if N < 2:
        raise ValueError(f"disendiff_separation: maps must be [..., N, h, w] with N >= 2 classes, got shape {tuple(maps.shape)}")
    s = smooth(maps, kernel, sigma)
    i, j = torch.triu_indices(N, N, offset=1)
    return soft_iou(s[..., i, :, :], s[..., j, :, :]).sum(-1)
