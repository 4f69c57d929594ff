"""Paper 18 (A-STAR): segregation and retention losses on the cross-attention maps of a prompt's concepts."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.operators import register


@register("astar_segregation", paper="18")
def astar_segregation(maps: Tensor) -> Tensor:
    """Overlap between every pair of concept maps: ``Σ_{i<j} Σ_p min(A_i, A_j) / Σ_p (A_i + A_j)``.

    Paper: 18, A-STAR segregation loss: minimising it pulls concepts apart, so two subjects do
    not share pixels (and neither is dropped for the other).

    Args:
        maps: ``[..., N, h, w]`` non-negative attention maps of ``N >= 2`` concepts.

    Returns:
        ``[...]`` the loss (0 for disjoint maps; at most ``N(N-1)/4``).

    Example:
        >>> a = torch.zeros(2, 4, 4); a[0, :, :2] = 1; a[1, :, 2:] = 1
        >>> float(astar_segregation(a))
        0.0
    """
    N = maps.shape[-3]
    if maps.dim() < 3 or N < 2:
        raise ValueError(f"astar_segregation: maps must be [..., N, h, w] with N >= 2 concepts, got shape {tuple(maps.shape)}")
    a = maps.flatten(-2)  # [..., N, P]
    i, j = torch.triu_indices(N, N, offset=1)
    overlap = torch.minimum(a[..., i, :], a[..., j, :]).sum(-1)  # [..., pairs]
    total = (a[..., i, :] + a[..., j, :]).sum(-1).clamp_min(1e-12)  # [..., pairs]
    return (overlap / total).sum(-1)


@register("astar_retention", paper="18")
def astar_retention(maps: Tensor, previous: Tensor, threshold: float = 0.5) -> Tensor:
    """How much of each concept's previous region its map has lost: ``Σ_i 1 − IoU(A_i, B_i)``.

    Paper: 18, A-STAR retention loss: ``B_i`` is the previous step's map binarised at
    ``threshold × max``, ``IoU(A, B) = Σ min(A, B) / Σ max(A, B)`` on maps scaled to a maximum of one, so a
    concept keeps the pixels it held at earlier denoising steps.

    Args:
        maps: ``[..., N, h, w]`` current maps (differentiable).
        previous: ``[..., N, h, w]`` the previous step's maps (no gradient needed).
        threshold: binarisation level as a fraction of each previous map's maximum.

    Returns:
        ``[...]`` the loss, 0 when each map is exactly its previous binary region.
    """
    if maps.shape != previous.shape:
        raise ValueError(f"astar_retention: maps {tuple(maps.shape)} and previous {tuple(previous.shape)} must have one shape")
    prev = previous.detach().flatten(-2)  # [..., N, P]
    b = (prev >= threshold * prev.amax(-1, keepdim=True)).to(maps.dtype)  # [..., N, P] binarised previous regions
    a = maps.flatten(-2)
    a = a / a.amax(-1, keepdim=True).clamp_min(1e-12)  # [..., N, P] scaled to max 1
    iou = torch.minimum(a, b).sum(-1) / torch.maximum(a, b).sum(-1).clamp_min(1e-12)  # [..., N]
    return (1 - iou).sum(-1)
