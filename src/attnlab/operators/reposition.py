"""Paper 16 (IR-Diffusion): the reposition step, moving a reference subject's features to the target's place."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.operators import register


@register("reposition", paper="16")
def reposition(features: Tensor, source: tuple[int, int, int, int], target: tuple[int, int, int, int]) -> Tensor:
    """``features`` ``[B, C, H, W]`` with the box ``source`` resized (bilinear) into the box ``target``; elsewhere unchanged.

    Paper: 16, IR-Diffusion reposition: the reference subject's features are placed where the
    subject is in the image being generated, so isolation attention lines them up pixel by pixel.
    Boxes are ``(top, left, height, width)`` in pixels of the feature map.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4); x[..., :2, :2] = 1
        >>> reposition(x, (0, 0, 2, 2), (2, 2, 2, 2))[0, 0, 2:, 2:].tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    H, W = features.shape[-2:]
    for name, (top, left, h, w) in (("source", source), ("target", target)):
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
            raise ValueError(
                f"reposition: the {name} box {(top, left, h, w)} (top, left, height, width) is not inside the {H}×{W} feature map"
            )
    t0, l0, h0, w0 = source
    t1, l1, h1, w1 = target
    crop = features[..., t0 : t0 + h0, l0 : l0 + w0]  # [B, C, h0, w0]
    moved = F.interpolate(crop, size=(h1, w1), mode="bilinear", align_corners=False) if (h0, w0) != (h1, w1) else crop
    out = features.clone()
    out[..., t1 : t1 + h1, l1 : l1 + w1] = moved
    return out
