"""Paper 30 (AttenCraft): concept masks from cross-attention refined by self-attention, and the JS loss to them."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.operators import register


@register("attencraft_masks", paper="30")
def attencraft_masks(cross: Tensor, self_attn: Tensor, margin: float = 0.1, power: int = 4) -> Tensor:
    """Each pixel's concept, from squared cross-attention maps refined by the self-attention affinity.

    Paper: 30, AttenCraft: ``R_i = S^power · A_i²`` (``S`` the self-attention matrix, row
    stochastic, raised to the 4th power by default), each ``R_i`` scaled to a maximum of one; pixel ``p`` goes
    to the concept of largest ``R_i[p]`` if it leads the runner-up by more than ``margin``, else
    to none.

    Args:
        cross: ``[..., N, P]`` cross-attention maps of ``N`` concept tokens over ``P`` pixels.
        self_attn: ``[..., P, P]`` self-attention probabilities (rows: queries).
        margin: how far the winner must lead (0.1 in the paper).
        power: the power of the affinity.

    Returns:
        bool ``[..., N, P]`` masks, disjoint; a pixel of no concept is False in all.

    Example:
        >>> masks = attencraft_masks(torch.eye(2).repeat_interleave(2, 1), torch.eye(4))
        >>> masks.int().tolist()
        [[1, 1, 0, 0], [0, 0, 1, 1]]
    """
    N, P = cross.shape[-2:]
    if self_attn.shape[-2:] != (P, P):
        raise ValueError(
            f"attencraft_masks: self_attn must be [..., P, P] with P = {P} pixels of cross, got shape {tuple(self_attn.shape)}"
        )
    affinity = torch.linalg.matrix_power(self_attn, power)  # [..., P, P]
    r = torch.matmul(affinity, (cross**2).transpose(-1, -2)).transpose(-1, -2)  # [..., N, P]
    r = r / r.amax(-1, keepdim=True).clamp_min(1e-12)
    if N == 1:
        return r > margin
    top = r.topk(2, dim=-2).values  # [..., 2, P]
    won = (top[..., 0, :] - top[..., 1, :]) > margin  # [..., P]
    return (r == top[..., :1, :]) & won.unsqueeze(-2)


@register("attencraft_js", paper="30")
def attencraft_js(maps: Tensor, masks: Tensor) -> Tensor:
    """Jensen-Shannon divergence between each concept's attention map and its mask, both as distributions over pixels.

    Paper: 30, AttenCraft: the loss that aligns a concept token's cross-attention with its mask.

    Args:
        maps: ``[..., N, P]`` non-negative attention maps.
        masks: ``[..., N, P]`` masks (bool or float), each with at least one pixel.

    Returns:
        ``[...]`` the divergence summed over concepts (nats; 0 when each map is its mask, normalised).
    """
    if maps.shape != masks.shape:
        raise ValueError(f"attencraft_js: maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have one shape")
    p = maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)
    q = masks.to(maps.dtype)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    m = (p + q) / 2
    kl = lambda a: (torch.xlogy(a, a) - torch.xlogy(a, m)).sum(-1)  # noqa: E731
    return ((kl(p) + kl(q)) / 2).sum(-1)
