"""Paper 71: self-attention over concatenated feature and cost tokens, aggregating both at once.

Dense correspondence (optical flow, semantic matching) aggregates a cost volume, the matching
scores of each source position against candidate target positions. Cost-only aggregation filters
the scores among themselves; the paper's integrative attention instead concatenates, per position,
the source feature descriptor and the cost vector, so that which positions attend to each other is
decided by appearance and matching evidence together:

    x_t = [f_t ; c_t] ∈ R^{C+C_c},    x' = x + MHSA(LN(x)),    [f'_t ; c'_t] = x'_t,

and both streams come out updated (a feedforward follows in the full block; stack blocks for depth).
Zeroing the features leaves attention driven by costs alone: the cost-only baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["FeatureCostAttention"]


@register("feature_cost_attention", paper="71")
class FeatureCostAttention(nn.Module):
    """Pre-norm multi-head self-attention and MLP over per-position ``[feature ; cost]`` tokens.

    Paper: 71, Unifying Feature and Cost Aggregation with Transformers for Dense Correspondence.

    Args:
        dim: feature width ``C``.
        cost_dim: cost width ``C_c`` (candidate displacements, or a projection of them).
        heads: attention heads; ``dim + cost_dim`` must be divisible by it.
        mlp_ratio: hidden width of the feedforward as a multiple of ``dim + cost_dim`` (0: no feedforward).

    Shapes:
        features ``[B, T, C]``, costs ``[B, T, C_c]`` → (features ``[B, T, C]``, costs ``[B, T, C_c]``).

    Example:
        >>> m = FeatureCostAttention(dim=24, cost_dim=8, heads=4)
        >>> f, c = m(torch.randn(2, 30, 24), torch.randn(2, 30, 8))
        >>> f.shape, c.shape
        (torch.Size([2, 30, 24]), torch.Size([2, 30, 8]))
    """

    def __init__(self, dim: int, cost_dim: int, heads: int = 4, *, mlp_ratio: float = 2.0):
        super().__init__()
        for name, v in {"dim": dim, "cost_dim": cost_dim, "heads": heads}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        width = dim + cost_dim
        if width % heads:
            raise ValueError(f"dim + cost_dim must be divisible by heads, got {dim} + {cost_dim} = {width} and heads={heads}")
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0 drops the feedforward), got mlp_ratio={mlp_ratio!r}")
        self.dim, self.cost_dim = dim, cost_dim
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = round(mlp_ratio * width)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)) if hidden else None

    def forward(self, features: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() != 3 or features.shape[-1] != self.dim:
            raise ValueError(f"features must be [B, T, C] with C={self.dim}, got shape {tuple(features.shape)}")
        if costs.shape != (*features.shape[:2], self.cost_dim):
            raise ValueError(
                f"costs must be [B, T, C_c] = {(*features.shape[:2], self.cost_dim)} (one cost vector per feature position), "
                f"got shape {tuple(costs.shape)}"
            )
        x = torch.cat([features, costs], -1)  # (B, T, C + C_c)
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]  # (B, T, C + C_c)
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x[..., : self.dim], x[..., self.dim :]  # (B, T, C), (B, T, C_c)
