"""Paper 75: FinalMLP, two MLP streams behind feature-selection gates, fused by multi-head bilinear terms.

FinalMLP (CTR prediction) shows that two plain MLPs beat one when each sees a differently gated
view of the input and their outputs are combined by second-order terms. Each stream ``i`` gates
the input features with

    gᵢ = 2σ(MLPᵢ(ctxᵢ)) ∈ (0, 2)^C,    xᵢ = x ⊙ gᵢ,    oᵢ = MLP_streamᵢ(xᵢ),

where the context ``ctxᵢ`` is a learned vector (the paper's default when no context fields are
chosen) or a given tensor; a gate at 1 (the gate MLP's last layer at zero) passes the plain
input. The two outputs are split into ``k`` heads and fused per head by

    y = Σₕ ( b + w₁ₕᵀ o₁ₕ + w₂ₕᵀ o₂ₕ + o₁ₕᵀ W₃ₕ o₂ₕ ),

one logit per example. Defaults follow the FuxiCTR reference: streams 64-64-64, a 64-unit gate
MLP, one head.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["FinalMLP"]


def _mlp(widths: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register("finalmlp", paper="75")
class FinalMLP(nn.Module):
    """Two gated MLP streams fused by a multi-head bilinear layer into one logit.

    Paper: 75, FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction.

    Args:
        dim: input width ``C`` (the concatenated feature embeddings).
        hidden: widths of each stream's MLP (FuxiCTR default ``(64, 64, 64)``); both streams alike
            unless ``hidden2`` is given.
        hidden2: widths of the second stream, default ``hidden``.
        heads: heads ``k`` of the bilinear fusion; the last width of each stream must be divisible by it.
        gate_hidden: hidden units of the feature-selection gate MLP.
        context_dim: width of a given context; ``None`` uses a learned context vector per stream.

    Shapes:
        x ``[B, C]`` (and optionally ctx1, ctx2 ``[B, context_dim]``) → logits ``[B]``.

    Example:
        >>> m = FinalMLP(dim=12, hidden=(16, 8), heads=2)
        >>> m(torch.randn(5, 12)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        dim: int,
        hidden: tuple[int, ...] = (64, 64, 64),
        *,
        hidden2: tuple[int, ...] | None = None,
        heads: int = 1,
        gate_hidden: int = 64,
        context_dim: int | None = None,
    ):
        super().__init__()
        hidden2 = hidden if hidden2 is None else hidden2
        for name, v in {"dim": dim, "heads": heads, "gate_hidden": gate_hidden}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        for name, h in {"hidden": hidden, "hidden2": hidden2}.items():
            if len(h) == 0 or any(not isinstance(w, int) or w <= 0 for w in h):
                raise ValueError(f"{name} must be a non-empty tuple of positive widths, got {name}={h!r}")
            if h[-1] % heads:
                raise ValueError(f"the last width of {name} must be divisible by heads, got {name}[-1]={h[-1]}, heads={heads}")
        if context_dim is not None and (not isinstance(context_dim, int) or context_dim <= 0):
            raise ValueError(f"context_dim must be a positive integer or None (learned context), got context_dim={context_dim!r}")
        self.dim, self.heads, self.context_dim = dim, heads, context_dim
        ctx = dim if context_dim is None else context_dim
        if context_dim is None:
            self.ctx1 = nn.Parameter(torch.zeros(ctx))
            self.ctx2 = nn.Parameter(torch.zeros(ctx))
        self.gate1 = _mlp([ctx, gate_hidden, dim], last_act=False)
        self.gate2 = _mlp([ctx, gate_hidden, dim], last_act=False)
        self.stream1 = _mlp([dim, *hidden], last_act=True)
        self.stream2 = _mlp([dim, *hidden2], last_act=True)
        d1, d2 = hidden[-1] // heads, hidden2[-1] // heads
        self.w1 = nn.Linear(d1, 1, bias=True)  # b + w₁ᵀo₁ (shared over heads, as the reference)
        self.w2 = nn.Linear(d2, 1, bias=False)
        self.w3 = nn.Parameter(torch.randn(heads, d1, d2) * (d1 * d2) ** -0.25 / 4)  # W₃ per head

    def gates(self, batch: int, ctx1: Tensor | None = None, ctx2: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The two feature-selection gates ``2σ(MLP(ctx))``, each ``[B, C]`` in ``(0, 2)``."""
        if self.context_dim is None:
            if ctx1 is not None or ctx2 is not None:
                raise ValueError(
                    "this FinalMLP learns its context (context_dim=None): call it without ctx1/ctx2, or build it with context_dim"
                )
            ctx1, ctx2 = self.ctx1.expand(batch, -1), self.ctx2.expand(batch, -1)
        else:
            for name, c in {"ctx1": ctx1, "ctx2": ctx2}.items():
                if c is None or c.shape != (batch, self.context_dim):
                    got = None if c is None else tuple(c.shape)
                    raise ValueError(f"{name} must be [B, {self.context_dim}] with B={batch} (context_dim is set), got {got}")
        return 2 * torch.sigmoid(self.gate1(ctx1)), 2 * torch.sigmoid(self.gate2(ctx2))  # (B, C) each

    def fuse(self, o1: Tensor, o2: Tensor) -> Tensor:
        """Multi-head bilinear fusion of the two streams' outputs ``[B, D1]``, ``[B, D2]`` → ``[B]``."""
        B, k = o1.shape[0], self.heads
        h1, h2 = o1.view(B, k, -1), o2.view(B, k, -1)  # (B, k, d1), (B, k, d2)
        bilinear = torch.einsum("bkd,kde,bke->bk", h1, self.w3, h2)  # (B, k)
        return (self.w1(h1).squeeze(-1) + self.w2(h2).squeeze(-1) + bilinear).sum(-1)  # (B,)

    def forward(self, x: Tensor, ctx1: Tensor | None = None, ctx2: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, C] with C={self.dim} (flatten the field embeddings), got shape {tuple(x.shape)}")
        g1, g2 = self.gates(x.shape[0], ctx1, ctx2)
        return self.fuse(self.stream1(x * g1), self.stream2(x * g2))  # (B,)
