"""Paper 44 (Structured diffusion guidance): one query's attention over ``k`` value sets, averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.core import attend
from attnlab.operators import register


@register("structured_cross_attention", paper="44")
def structured_cross_attention(q: Tensor, k: Tensor, values: Sequence[Tensor], **attend_options) -> Tensor:
    """``O = (1/k) Σ_i softmax(q kᵀ) V_i``: the keys of the whole prompt, the values of each of its noun phrases.

    Paper: 44, Structured diffusion guidance. The weights are shared by every value set, so the
    mean of the outputs is the output for the mean of the values: one :func:`attnlab.attend` call
    at the site (probes see the shared weights once).

    Args:
        q: ``[B, H, Tq, D]`` queries (image tokens).
        k: ``[B, H, Tk, D]`` keys (the full prompt's encoding).
        values: ``k >= 1`` tensors ``[B, H, Tk, Dv]`` (one per noun-phrase encoding).
        **attend_options: passed to :func:`attnlab.attend` (``mask``, ``scale``, ``site``, ...).

    Returns:
        ``[B, H, Tq, Dv]``.

    Example:
        >>> q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 3, 8)
        >>> structured_cross_attention(q, k, [torch.randn(1, 2, 3, 8)] * 2).shape
        torch.Size([1, 2, 4, 8])
    """
    if not values:
        raise ValueError("structured_cross_attention: values must hold at least one value set [B, H, Tk, Dv], got none")
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1:
        raise ValueError(f"structured_cross_attention: every value set must have one shape, got {sorted(shapes)}")
    return attend(q, k, torch.stack(list(values)).mean(0), **attend_options)  # [B, H, Tq, Dv]
