"""Paper 65 (Denoising task routing): each timestep uses a sliding window of ``βC`` channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.operators import register


def task_routing_mask(t: int, steps: int, channels: int, beta: float = 0.8, alpha: float = 4.0) -> Tensor:
    """Bool ``[channels]``: the window of ``⌊βC⌋`` channels timestep ``t`` of ``steps`` uses.

    Paper: 65, Denoising task routing: the window starts at ``⌊(C − ⌊βC⌋)(t / (steps − 1))^α⌋``,
    so neighbouring timesteps share most channels, and the first and last share ``(2β − 1)C``.

    Example:
        >>> task_routing_mask(0, 10, 10, beta=0.8).int().tolist()
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    """
    if not 0 < beta <= 1:
        raise ValueError(f"task_routing_mask: beta must be in (0, 1], got beta={beta}")
    if not 0 <= t < steps:
        raise ValueError(f"task_routing_mask: t must be a timestep in 0..{steps - 1}, got t={t}")
    width = int(beta * channels)
    start = int((channels - width) * (t / max(steps - 1, 1)) ** alpha)
    c = torch.arange(channels)
    return (c >= start) & (c < start + width)


@register("task_routing", paper="65")
class TaskRouting(nn.Module):
    """Multiplies activations ``[B, C, ...]`` by timestep ``t``'s channel window (:func:`task_routing_mask`).

    Paper: 65, Denoising task routing: denoising at each timestep is a task, routed to its own
    channels of one shared network, without new parameters.

    Args:
        channels: ``C``.
        steps: number of timesteps.
        beta: fraction of channels each timestep uses (0.8 in the paper).
        alpha: how the window's start moves with ``t`` (4 in the paper).

    Shapes:
        ``x`` ``[B, C, ...]`` → ``[B, C, ...]``.
    """

    def __init__(self, channels: int, steps: int, beta: float = 0.8, alpha: float = 4.0):
        super().__init__()
        masks = torch.stack([task_routing_mask(t, steps, channels, beta, alpha) for t in range(steps)])  # [steps, C]
        self.register_buffer("masks", masks, persistent=False)

    def forward(self, x: Tensor, t: int) -> Tensor:
        m = self.masks[t].to(x.dtype)  # [C]
        return x * m.view(1, -1, *([1] * (x.dim() - 2)))
