"""Paper 27: Context-aware self-attention (Yang et al., "Context-Aware Self-Attention Networks").

Queries and keys are contextualised with a summary of the whole sequence before attention:

    Q̂ = (1 − λ_Q) Q + λ_Q (C U_Q),   λ_Q = σ(Q v_Q^H + C U_Q v_Q^C)
    K̂ = (1 − λ_K) K + λ_K (C U_K),   λ_K = σ(K v_K^H + C U_K v_K^C)

with ``Q = X W_Q``, ``K = X W_K``, ``C`` the global context (the mean of ``X`` over tokens), ``U``
a ``C × (heads · D)`` matrix and ``v^H``, ``v^C`` vectors, so that ``λ`` is one gate per token.
Values are left alone, as in the paper. The mixing acts on the full projections, before the
heads are split (and before RoPE). With ``is_causal=True`` the context of token ``t`` is the mean
of tokens ``0..t`` (an attnlab choice: the paper's encoder sees the whole sentence), so the
layer stays causal. With ``λ = 0`` it is ``mha``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.core import Site
from attnlab.mechanisms import register
from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["ContextAwareAttention", "ContextGate", "global_context"]


def global_context(x: Tensor, *, is_causal: bool = False) -> Tensor:
    """``C``: the mean of ``x`` over tokens ``[B, 1, C]``, or the running mean ``[B, T, C]`` if causal."""
    if not is_causal:
        return x.mean(1, keepdim=True)  # [B, 1, C]
    count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]  # [T, 1]
    return x.cumsum(1) / count  # [B, T, C]


class ContextGate(nn.Module):
    """The gate ``λ = σ(S v^H + (C U) v^C)``, one value per token.

    Paper: 27 (Context-Aware Self-Attention Networks).

    Shapes:
        ``states [B, T, W]``, ``context [B, 1|T, W]`` (already ``C U``) -> ``λ [B, T, 1]``.
    """

    def __init__(self, width: int):
        super().__init__()
        self.v_states = nn.Linear(width, 1, bias=False)  # v^H
        self.v_context = nn.Linear(width, 1, bias=False)  # v^C

    def forward(self, states: Tensor, context: Tensor) -> Tensor:
        return torch.sigmoid(self.v_states(states) + self.v_context(context))  # [B, T, 1]


@register("context_aware", paper="27", time="O(T²)", memory="O(T)")
class ContextAwareAttention(MultiHeadAttention):
    """Multi-head attention whose queries and keys are gated mixtures of themselves and the global context.

    Paper: 27 (Context-Aware Self-Attention Networks).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: query heads ``H``.
        kv_heads: key/value heads (GQA); ``heads`` if None.
        is_causal: each token attends only to itself and earlier tokens, and its context is the mean
            of the tokens up to itself.
        rope: rotary position embedding on the contextualised queries and keys.
        rope_base: RoPE's frequency base.
        backend: softmax backend for :func:`attnlab.core.attend`.

    Shapes:
        ``x [B, T, C] -> [B, T, C]``.

    Example:
        >>> m = ContextAwareAttention(32, 4)
        >>> m(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        is_causal: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        backend: str = "auto",
    ):
        super().__init__(dim, heads, kv_heads=kv_heads, is_causal=is_causal, rope=rope, rope_base=rope_base, backend=backend)
        q_width, kv_width = heads * self.head_dim, self.kv_heads * self.head_dim
        self.context_q = nn.Linear(dim, q_width, bias=False)  # U_Q
        self.context_k = nn.Linear(dim, kv_width, bias=False)  # U_K
        self.gate_q = ContextGate(q_width)  # λ_Q
        self.gate_k = ContextGate(kv_width)  # λ_K
        self.site = Site(name="context_aware", num_heads=heads, num_kv_heads=self.kv_heads)

    def forward(self, x: Tensor, mask=None) -> Tensor:
        self.check_input(x)
        c = global_context(x, is_causal=self.is_causal)  # [B, 1|T, C]
        q, k = self.q_proj(x), self.k_proj(x)  # [B, T, H·D], [B, T, Hkv·D]
        cq, ck = self.context_q(c), self.context_k(c)  # [B, 1|T, H·D], [B, 1|T, Hkv·D]
        lam_q, lam_k = self.gate_q(q, cq), self.gate_k(k, ck)  # [B, T, 1] each
        q = (1 - lam_q) * q + lam_q * cq  # [B, T, H·D]
        k = (1 - lam_k) * k + lam_k * ck  # [B, T, Hkv·D]
        q, k, v = self.split_heads(q, k, self.v_proj(x))
        return self.merge(self.attend_heads(q, k, v, mask=mask))
