"""Synthetic attention maps: soft disks on a grid, and the IoU of their binarised regions."""

import torch


def disk(size: int, cy: float, cx: float, r: float, soft: float = 1.0) -> torch.Tensor:
    """``[size, size]`` in (0, 1): 1 inside the disk of radius ``r`` at ``(cy, cx)``, falling off over ``soft`` pixels."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    d = ((y - cy) ** 2 + (x - cx) ** 2).sqrt()
    return torch.sigmoid((r - d) / soft)


def iou(a: torch.Tensor, b: torch.Tensor, level: float = 0.5) -> float:
    """IoU of the regions where each map is at least ``level`` of its maximum."""
    ra, rb = a >= level * a.max(), b >= level * b.max()
    return float((ra & rb).sum() / (ra | rb).sum())
