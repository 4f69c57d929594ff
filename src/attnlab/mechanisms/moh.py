"""Paper 28: MoH, Multi-Head Attention as Mixture-of-Head attention.

Multi-head attention is a sum over heads, ``Σ_i H_i W_O^i``; MoH makes it a weighted sum over
the heads each token selects, ``Σ_i g_i H_i W_O^i``, treating heads as experts:

- ``shared_heads`` heads are always on, weighted by ``softmax(W_s x) · h_s``;
- the other (routed) heads are chosen per token by a router: the top ``top_k`` of
  ``softmax(W_r x)``, renormalised over the chosen ones and scaled by ``top_k``; the rest get 0;
- a two-way softmax ``[α_1, α_2] = 2 · softmax(W_h x)`` balances the shared and routed groups.

The scalings (each group's gates sum to its active count, ``α`` to 2) follow the official code
(github.com/SkyworkAI/MoH) so that every gate starts near 1 and MoH starts near MHA. A
load-balance loss ``β · E · Σ_i f_i P_i`` over the ``E`` routed heads (``f_i``: fraction of
tokens that select head ``i``, ``P_i``: mean router probability of head ``i``) is left in
``self.aux_loss`` after each forward, for the training loop to add. All heads are computed and
the unselected ones multiplied by 0: the paper's compute saving needs a sparse kernel.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site
from attnlab.mechanisms import register
from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["MixtureOfHeads", "load_balance_loss"]

_GATES = ("learned", "unit")


def load_balance_loss(probs: Tensor, selected: Tensor) -> Tensor:
    """MoH's load-balance loss ``E · Σ_i f_i P_i`` (paper 28, official code's scaling).

    Args:
        probs: router probabilities ``[N, E]`` over the ``E`` routed heads, for ``N`` tokens.
        selected: bool ``[N, E]``, True where a token selected a head.

    Returns:
        A scalar: ``top_k`` when routing is uniform, up to ``E`` when every token picks the same head.
    """
    E = probs.shape[-1]
    f = selected.to(probs.dtype).mean(0)  # [E] fraction of tokens that select each head
    P = probs.mean(0)  # [E] mean router probability
    return E * (f * P).sum()


@register("moh", paper="28", time="O(T²)", memory="O(T)")
class MixtureOfHeads(MultiHeadAttention):
    """Mixture-of-Head attention: each token weights always-on shared heads and its top-K routed heads.

    Paper: 28 (MoH: Multi-Head Attention as Mixture-of-Head Attention).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: all heads ``h`` (shared + routed).
        shared_heads: heads every token uses (``heads // 2`` if None, as MoH-LLaMA3's 16 of 32).
        top_k: routed heads each token selects (half the routed heads if None, so 75% of all heads
            are active by default, as MoH-LLaMA3).
        kv_heads: key/value heads (GQA); ``heads`` if None.
        is_causal: each token attends only to itself and earlier tokens.
        rope: rotary position embedding on queries and keys.
        rope_base: RoPE's frequency base.
        aux_loss_coef: ``β``, the weight of the load-balance loss in ``self.aux_loss``.
        gates: ``"learned"`` (the paper), or ``"unit"``: every selected head weighted 1, an ablation
            of the weighting that keeps the routing (with ``top_k = heads - shared_heads`` it is MHA).
        backend: softmax backend for :func:`attnlab.core.attend`.

    Shapes:
        ``x [B, T, C] -> [B, T, C]``; ``self.aux_loss`` is a scalar.

    Example:
        >>> m = MixtureOfHeads(32, 8, shared_heads=2, top_k=3)
        >>> m(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        shared_heads: int | None = None,
        top_k: int | None = None,
        kv_heads: int | None = None,
        is_causal: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        aux_loss_coef: float = 0.01,
        gates: str = "learned",
        backend: str = "auto",
    ):
        super().__init__(dim, heads, kv_heads=kv_heads, is_causal=is_causal, rope=rope, rope_base=rope_base, backend=backend)
        shared = heads // 2 if shared_heads is None else shared_heads
        if isinstance(shared, bool) or not isinstance(shared, int) or not 0 <= shared <= heads:
            raise ValueError(f"shared_heads must be an int in [0, heads], got shared_heads={shared_heads!r}, heads={heads}")
        routed = heads - shared
        top_k = (max(1, routed // 2) if routed else 0) if top_k is None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not (1 if routed else 0) <= top_k <= routed:
            raise ValueError(
                f"top_k must be an int in [1, heads - shared_heads] = [1, {routed}] (0 when every head is shared), got top_k={top_k!r}"
            )
        if gates not in _GATES:
            raise ValueError(f"gates must be one of {_GATES}, got gates={gates!r}")
        if not (isinstance(aux_loss_coef, (int, float)) and aux_loss_coef >= 0):
            raise ValueError(f"aux_loss_coef must be a number >= 0, got aux_loss_coef={aux_loss_coef!r}")
        self.shared, self.routed, self.top_k = shared, routed, top_k
        self.aux_loss_coef, self.gates = float(aux_loss_coef), gates
        self.router = nn.Linear(dim, routed, bias=False) if routed else None  # W_r
        self.shared_router = nn.Linear(dim, shared, bias=False) if shared > 1 else None  # W_s
        self.group_router = nn.Linear(dim, 2, bias=False) if shared and routed else None  # W_h
        self.site = Site(name="moh", num_heads=heads, num_kv_heads=self.kv_heads)
        self.aux_loss = torch.zeros(())

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Head gates ``[B, T, h]`` (0 for unselected heads; shared heads first) and the weighted load-balance loss."""
        B, T, _ = x.shape
        ones = x.new_ones(B, T, 1)
        g_shared = self.shared_router(x).softmax(-1) * self.shared if self.shared_router else ones  # [B, T, hs]
        if not self.routed:
            return (ones.expand(B, T, self.heads) if self.gates == "unit" else g_shared), x.new_zeros(())
        probs = self.router(x).softmax(-1)  # [B, T, E]
        top = probs.topk(self.top_k, dim=-1).indices  # [B, T, K]
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)  # [B, T, E]
        aux = self.aux_loss_coef * load_balance_loss(probs.flatten(0, 1), selected.flatten(0, 1))
        if self.gates == "unit":
            return torch.cat([ones.expand(B, T, self.shared), selected.to(x.dtype)], dim=-1), aux  # [B, T, h]
        g_routed = probs * selected  # [B, T, E]
        g_routed = g_routed / g_routed.sum(-1, keepdim=True).clamp(min=torch.finfo(g_routed.dtype).tiny) * self.top_k
        if not self.shared:
            return g_routed, aux
        alpha = self.group_router(x).softmax(-1) * 2  # [B, T, 2]
        return torch.cat([g_shared * alpha[..., :1], g_routed * alpha[..., 1:]], dim=-1), aux  # [B, T, h]

    def forward(self, x: Tensor, mask=None) -> Tensor:
        self.check_input(x)
        q, k, v = self.project(x)
        out = self.attend_heads(q, k, v, mask=mask)  # [B, h, T, D]
        gates, self.aux_loss = self.route(x)
        return self.merge(out * rearrange(gates, "b t h -> b h t 1"))  # [B, T, C]
