"""Paper 9: DependencyViT on an image grid, and DependencyViT-Lite's leaf-token pruning.

DependencyViT applies reversed attention (:mod:`attnlab.mechanisms.reversed`) to the patch tokens
of an image: the grid ``[B, H, W, C]`` is flattened row-major into ``T = H·W`` tokens, every
patch chooses its parents among all patches, and parents gather their children's messages.

DependencyViT-Lite prunes leaves: tokens that receive the least mass from children (row sums of
the soft dependency mask ``Σ_h Aᵀ ⊙ p ⊙ m``) send their message and are then dropped, keeping a
fraction ``keep_ratio`` of the tokens. A pruned set is no longer a grid, so with ``keep_ratio < 1``
the layer returns the kept tokens ``[B, T', C]`` and their row-major grid indices.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.mechanisms import register
from attnlab.mechanisms.reversed import Reversed

__all__ = ["Dependency", "prune_leaves"]


def prune_leaves(tokens: Tensor, mass: Tensor, keep_ratio: float) -> tuple[Tensor, Tensor]:
    """Keep the ``max(1, ⌊keep_ratio·T⌋)`` tokens that receive the most mass (paper 9, Lite).

    Args:
        tokens: ``[B, T, C]``.
        mass: ``[B, T]`` mass each token receives from its children.
        keep_ratio: fraction of tokens to keep, in ``(0, 1]``.

    Returns:
        ``(kept [B, T', C], index [B, T'])``, in token order (indices ascending).
    """
    B, T, C = tokens.shape
    n = max(1, math.floor(keep_ratio * T))
    index = torch.sort(mass.topk(n, dim=-1).indices, dim=-1).values  # [B, T']
    return tokens.gather(1, index.unsqueeze(-1).expand(B, n, C)), index  # [B, T', C]


@register("dependency", paper="9", layout="[B, H, W, C]", time="O(T²)", memory="O(T²)")
class Dependency(Reversed):
    """DependencyViT reversed attention over an image grid, with optional leaf pruning (Lite).

    The same layer as :class:`~attnlab.mechanisms.reversed.Reversed` (same parameters, so state
    dicts are interchangeable) applied to the row-major flattened grid.

    Paper: 9, Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by it.
        keep_ratio: fraction of tokens kept after the layer (DependencyViT-Lite); 1 keeps the grid.
        temperature: τ of the head selector's softmax (paper: 0.1).
        head_selector: learn ``p_head``; False sets ``p = 1``.
        message_controller: learn ``m``; False sets ``m = 1``.
        qkv_bias: bias in the q/k/v projection.

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last) → ``[B, Hg, Wg, C]`` when ``keep_ratio == 1``, else
        ``(tokens [B, T', C], index [B, T'])`` with ``T' = max(1, ⌊keep_ratio · Hg·Wg⌋)``.

    Example:
        >>> m = Dependency(dim=16, heads=2)
        >>> m(torch.randn(2, 4, 5, 16)).shape
        torch.Size([2, 4, 5, 16])
        >>> tokens, index = Dependency(dim=16, heads=2, keep_ratio=0.5)(torch.randn(2, 4, 5, 16))
        >>> tokens.shape, index.shape
        (torch.Size([2, 10, 16]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        keep_ratio: float = 1.0,
        temperature: float = 0.1,
        head_selector: bool = True,
        message_controller: bool = True,
        qkv_bias: bool = False,
    ):
        super().__init__(
            dim, heads, temperature=temperature, head_selector=head_selector, message_controller=message_controller, qkv_bias=qkv_bias
        )
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got keep_ratio={keep_ratio!r} (Lite keeps e.g. 0.84 per pruning layer)")
        self.keep_ratio = float(keep_ratio)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C={self.dim}, got shape {tuple(x.shape)}")
        B, Hg, Wg, C = x.shape
        out, mass = self.messages(x.reshape(B, Hg * Wg, C))  # [B, T, C], [B, T]
        if self.keep_ratio == 1.0:
            return out.reshape(B, Hg, Wg, C)
        return prune_leaves(out, mass.detach(), self.keep_ratio)
