"""Paper 10 (NormGrad): saliency of each token (or image patch) from an activation and its gradient.

At a hook point with activation ``a [B, T, ...]`` and gradient ``g = ∂L/∂a``, location ``u``'s
saliency is

    NormGrad:            ‖g_u‖ · ‖a_u‖
    selective NormGrad:  ‖max(0, a_u ⊙ g_u)‖

with norms over everything after ``T`` (channels; ``attn.z``'s heads and head dims together).
``‖g_u‖ · ‖a_u‖ = ‖g_u a_uᵀ‖_F`` is the norm of the weight gradient at ``u`` of a 1×1 convolution
(a Linear over channels) with identity weight inserted at the point: the paper's reading of the
score, and the test's reference. In a ViT a patch is a token: reshape ``[B, T]`` to the patch grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnlab.models.graph import intervene

__all__ = ["normgrad"]


def normgrad(model: nn.Module, point: str, loss: Callable[[], Tensor], *, selective: bool = False) -> Tensor:
    """NormGrad saliency of every location of hook point ``point``: ``[B, T]``.

    Paper: 10 (NormGrad saliency).
    Shapes: the point's activation ``[B, T, ...]`` -> ``[B, T]``.

    Args:
        model: a model with a hook graph (``attnlab.hook_points``).
        point: one hook point with a token axis, e.g. ``layers.3.resid_post`` or ``layers.3.attn.z``
            (not ``attn.probs``, which is streamed in chunks).
        loss: runs the model and returns the scalar to explain (a loss, a logit, a log-probability);
            called once, with gradients on.
        selective: the selective variant ``‖max(0, a ⊙ g)‖``.

    Example:
        >>> from attnlab.models.tiny import TinyTransformer
        >>> model = TinyTransformer(11, dim=16, heads=2, layers=2)
        >>> ids = torch.randint(0, 11, (1, 6))
        >>> normgrad(model, "layers.1.resid_pre", lambda: model(ids)[0, -1, 3]).shape
        torch.Size([1, 6])
    """
    if not isinstance(point, str) or point.endswith(".probs") or "*" in point:
        raise ValueError(f"normgrad reads one hook point with a token axis (e.g. 'layers.3.resid_post'), got {point!r}")
    seen: list[Tensor] = []

    def keep(x: Tensor, name: str) -> Tensor:
        seen.append(x.detach().requires_grad_())  # a leaf with the same values: the pass runs on from it, and ∂L/∂a exists
        return seen[-1]  # even when no parameter or input requires gradients

    with torch.enable_grad(), intervene(model, {point: keep}):
        value = loss()
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss must return a scalar tensor, got {type(value).__name__} {getattr(value, 'shape', '')}")
        if len(seen) != 1:
            raise ValueError(f"loss must run the model once: {point} was reached {len(seen)} times")
        (a,) = seen
        if not value.requires_grad:
            raise ValueError(f"loss does not depend on {point}: return a value computed from this model's run")
        (g,) = torch.autograd.grad(value, a)
    a, g = a.detach().flatten(2), g.flatten(2)  # [B, T, F]
    if selective:
        return (a * g).clamp_min(0).norm(dim=-1)  # [B, T]
    return g.norm(dim=-1) * a.norm(dim=-1)  # [B, T]
