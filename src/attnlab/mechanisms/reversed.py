"""Paper 9: DependencyViT reversed attention (Visual Dependency Transformers), sequence form.

Ordinary attention lets a query gather from the keys it attends to. Reversed attention reads
``A = softmax(q kᵀ · scale)`` as each *child* token's distribution over its *parents* (row ``i``
of ``A`` sums to 1 over parents ``j``) and sends messages the other way: a parent collects what
its children send,

    out_j = Σ_i A[i, j] · p_h(i) · m(i) · v_i,    that is    out = (Aᵀ ⊙ p_head ⊙ m) V,

where ``p_head(i) = softmax_h(x_i W_p / τ)`` (τ = 0.1) is the head selector, a per-child
distribution over heads, and ``m(i) = σ(MLP(x_i))`` is the message controller, a per-child gate
on how much it sends. ``Σ_h Aᵀ ⊙ p ⊙ m`` is the paper's soft dependency mask; its row sums, the
mass each token receives from its children, find the leaf tokens that DependencyViT-Lite prunes
(:mod:`attnlab.mechanisms.dependency`).

``A`` is transposed before it meets ``V``, so it is needed whole: it is computed explicitly here
(softmax statistics in float32, float64 for float64 inputs), not through
:func:`attnlab.core.attend`, and probes and edits attached at sites do not see it.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core.backends.base import compute_dtype
from attnlab.mechanisms import register

__all__ = ["Reversed", "child_attention", "incoming_mass", "reversed_messages"]


def child_attention(q: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Each child's distribution over parents, ``A = softmax(q kᵀ · scale)`` (paper 9).

    Args:
        q: children's queries ``[B, H, T, D]``.
        k: parents' keys ``[B, H, T, D]``.
        scale: multiplies ``q kᵀ``; default ``1 / sqrt(D)``.

    Returns:
        ``[B, H, T, T]`` in float32 (float64 for float64 inputs); row ``i`` (child) sums to 1.
    """
    dt = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * scale  # [B, H, T, T]
    return torch.softmax(s, dim=-1)


def reversed_messages(probs: Tensor, v: Tensor, p: Tensor, m: Tensor) -> Tensor:
    """Reversed attention ``out = (Aᵀ ⊙ p ⊙ m) V`` (paper 9).

    Args:
        probs: ``A`` ``[B, H, T, T]``, child ``i``'s probability of choosing parent ``j`` at ``[i, j]``.
        v: children's values ``[B, H, T, Dv]``.
        p: head selector ``[B, H, T]``, the weight of child ``i``'s message in head ``h``.
        m: message controller ``[B, T]``, how much child ``i`` sends.

    Returns:
        ``[B, H, T, Dv]``: row ``j`` is what parent ``j`` receives.
    """
    w = p * m.unsqueeze(1)  # [B, H, T] what each child sends, per head
    return torch.matmul(probs.transpose(-1, -2), w.unsqueeze(-1) * v)  # [B, H, T, Dv]


def incoming_mass(probs: Tensor, p: Tensor, m: Tensor) -> Tensor:
    """Mass each token receives as a parent: row sums of the soft dependency mask ``Σ_h Aᵀ ⊙ p ⊙ m``.

    Shapes: probs ``[B, H, T, T]``, p ``[B, H, T]``, m ``[B, T]`` → ``[B, T]``. Leaf tokens
    (nobody's parent) receive the least.
    """
    return torch.einsum("bhij,bhi->bj", probs, p * m.unsqueeze(1))  # [B, T]


@register("reversed", paper="9", layout="[B, T, C]", time="O(T²)", memory="O(T²)")
class Reversed(nn.Module):
    """DependencyViT reversed attention: children send messages to the parents they attend to.

    ``out = proj((Aᵀ ⊙ p_head ⊙ m) V)`` with ``A`` the softmax attention of children (rows) over
    parents, ``p_head`` a per-token softmax over heads at temperature τ, and ``m`` a per-token
    sigmoid gate (the message controller, a 2-layer GELU MLP of width ``dim // 2``). The
    message controller is per layer here; the paper multiplies it across layers, which a model
    stacking these layers can do.

    Paper: 9, Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by it.
        temperature: τ of the head selector's softmax (paper: 0.1).
        head_selector: learn ``p_head``; False sets ``p = 1`` (the paper's ablation).
        message_controller: learn ``m``; False sets ``m = 1``.
        qkv_bias: bias in the q/k/v projection.

    Shapes:
        x ``[B, T, C]`` → ``[B, T, C]``.

    Example:
        >>> m = Reversed(dim=32, heads=4)
        >>> m(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        temperature: float = 0.1,
        head_selector: bool = True,
        message_controller: bool = True,
        qkv_bias: bool = False,
    ):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (paper: 0.1), got temperature={temperature!r}")
        self.dim, self.heads, self.temperature = dim, heads, float(temperature)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.selector = nn.Linear(dim, heads) if head_selector else None
        hidden = max(1, dim // 2)
        self.controller = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)) if message_controller else None
        self.proj = nn.Linear(dim, dim)

    def messages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The layer's output ``[B, T, C]`` and the mass each token receives ``[B, T]`` (float32)."""
        B, T, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)  # [B, H, T, D] each
        probs = child_attention(q, k)  # [B, H, T, T]
        dt = probs.dtype
        if self.selector is None:
            p = probs.new_ones(B, self.heads, T)
        else:
            p = torch.softmax(self.selector(x).to(dt) / self.temperature, dim=-1).transpose(1, 2)  # [B, H, T]
        m = probs.new_ones(B, T) if self.controller is None else torch.sigmoid(self.controller(x).to(dt)).squeeze(-1)  # [B, T]
        out = reversed_messages(probs, v.to(dt), p, m)  # [B, H, T, D]
        out = rearrange(out, "b h t d -> b t (h d)").to(x.dtype)  # [B, T, C]
        return self.proj(out), incoming_mass(probs, p, m)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, T, C] with C={self.dim}, got shape {tuple(x.shape)}")
        return self.messages(x)[0]
