"""Paper 64 (F-LMM): segment the image region a word names from the frozen model's word-to-patch attention.

F-LMM (Wu et al. 2025, "F-LMM: Grounding Frozen Large Multimodal Models") keeps the
vision-language model frozen and reads, for a word, the attention of its tokens over the image
tokens in every layer and head. Reshaped to the patch grid, the ``L · H`` maps are the channels of
an image; a small CNN turns them into mask logits, trained with dice + BCE against the word's mask
(the paper then refines the mask with SAM; that stage is not here):

    x[l·H + h, i, j] = A_{l,h}[word → patch (i, j)]          (B, L·H, h, w)
    logits = CNN(x / Σ_{ij} x)                                (B, 1, h, w)
    loss = BCE(logits, m) + dice(σ(logits), m)

The maps come from a run of the model with :class:`attnlab.probes.WordToPatch` attached (the word's
rows over the image tokens, never a ``T × T`` matrix); :meth:`WordToPatch.maps` stacks them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["FLMMHead", "dice_bce_loss", "mask_iou"]


@register("flmm_head", paper="64")
class FLMMHead(nn.Module):
    """A small CNN from stacked word-to-patch attention maps to mask logits.

    Paper: 64 (F-LMM).
    Shapes: ``maps`` ``[B, C, h, w]`` with ``C = L · H`` → logits ``[B, 1, h, w]`` (or ``size``).

    Args:
        channels: ``L · H``, the number of stacked maps.
        width: channels of the hidden convolutions.
        normalize: divide each map by its sum over the patches first (layers' maps differ in scale).

    Example:
        >>> FLMMHead(12)(torch.rand(2, 12, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, channels: int, width: int = 32, normalize: bool = True):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"FLMMHead: channels must be the number of stacked maps (layers × heads), got channels={channels!r}")
        self.channels, self.normalize = channels, normalize
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GroupNorm(4 if width % 4 == 0 else 1, width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if maps.dim() != 4 or maps.shape[1] != self.channels:
            raise ValueError(
                f"FLMMHead: maps must be [B, {self.channels}, h, w] (layers × heads as channels), got shape {list(maps.shape)}"
            )
        x = maps.float()
        if self.normalize:
            x = x / x.sum((-2, -1), keepdim=True).clamp_min(1e-12)  # [B, C, h, w] each map sums to 1
            x = x * (x.shape[-2] * x.shape[-1])  # mean 1: the scale of the input does not depend on the grid
        logits = self.net(x)  # [B, 1, h, w]
        return logits if size is None else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register("dice_bce_loss", paper="64")
def dice_bce_loss(logits: Tensor, target: Tensor, *, dice_weight: float = 1.0, bce_weight: float = 1.0, eps: float = 1.0) -> Tensor:
    """F-LMM's mask loss: ``bce_weight · BCE(logits, m) + dice_weight · (1 − dice(σ(logits), m))``, mean over the batch.

    Paper: 64 (F-LMM).
    Shapes: ``logits`` and ``target`` ``[B, 1, h, w]`` (or ``[B, h, w]``); ``target`` in {0, 1}.

    Example:
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
        >>> float(dice_bce_loss(100 * (2 * m - 1), m)) < 1e-3
        True
    """
    if logits.shape != target.shape:
        raise ValueError(f"dice_bce_loss: logits and target must have one shape, got {list(logits.shape)} and {list(target.shape)}")
    t = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits).flatten(1)  # [B, h·w]
    t = t.flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)  # [B]
    return bce_weight * bce + dice_weight * (1 - dice).mean()


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of boolean masks ``[B, ...]`` per item ``[B]`` (1 where both are empty)."""
    p, t = pred.bool().flatten(1), target.bool().flatten(1)
    inter, union = (p & t).sum(1).double(), (p | t).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)
