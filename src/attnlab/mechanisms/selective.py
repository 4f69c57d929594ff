"""Paper 51: Selective Attention (Selective Self-Attention, SSA): temperature-scaled queries and values.

Softmax attention treats every query alike; SSA lets each query choose how sharp its attention
is by scaling it with an inverse temperature before the softmax:

    q̃_i = τ(x_i, i) · q_i,   τ(x_i, i) = τ_pos(i) + τ_tok(x_i)
    τ_pos(i) = 1 + σ(α) · log n_i        (n_i: keys query i sees: i under a causal mask, else T)
    τ_tok(x) = tanh(x · w + b)           (per head, learned from the token)

The position term counters attention dilution as the context grows; the token term lets
queries be sparse or diffuse by content. The optional value temperature scales values,
``ṽ_j = (1 + tanh(x_j · u + c)) · v_j``, so that a token can silence itself.

Choices (the paper's code at github.com/umich-sota/selective_attention shows only the position
term, as ``1 + exp(-exp(β)) log i``): ``σ(α)`` per head, as in PAPERS.md, with ``α₀ = -4.5`` so
that ``σ(α₀) ≈ 0.011 ≈ exp(-exp(1.5))``, that code's starting value; the token and value terms
start at 0 (zero weights), so at initialisation only the small position term departs from MHA.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site
from attnlab.mechanisms import register
from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["SelectiveAttention"]

_ALPHA0 = -4.5  # σ(-4.5) ≈ 0.011, the authors' initial exp(-exp(1.5))


@register("selective", paper="51", time="O(T²)", memory="O(T)")
class SelectiveAttention(MultiHeadAttention):
    """Multi-head attention whose queries (and optionally values) are scaled by learned temperatures.

    Paper: 51 (Selective Attention: Enhancing Transformer through Principled Context Control).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: query heads ``H``.
        position: the position temperature ``1 + σ(α) log n_i`` (else 1).
        token: the token temperature ``tanh(x · w + b)`` (else 0).
        value: the value temperature ``1 + tanh(x · u + c)`` (else 1).
        kv_heads: key/value heads (GQA); ``heads`` if None.
        is_causal: each token attends only to itself and earlier tokens.
        rope: rotary position embedding on queries and keys.
        rope_base: RoPE's frequency base.
        backend: softmax backend for :func:`attnlab.core.attend`.

    Shapes:
        ``x [B, T, C] -> [B, T, C]``. With all three temperatures off it is ``mha``.

    Example:
        >>> m = SelectiveAttention(32, 4, value=True, is_causal=True)
        >>> m(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        position: bool = True,
        token: bool = True,
        value: bool = False,
        kv_heads: int | None = None,
        is_causal: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        backend: str = "auto",
    ):
        super().__init__(dim, heads, kv_heads=kv_heads, is_causal=is_causal, rope=rope, rope_base=rope_base, backend=backend)
        for name, flag in (("position", position), ("token", token), ("value", value)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {name}={flag!r}")
        self.alpha = nn.Parameter(torch.full((heads,), _ALPHA0)) if position else None
        self.token_temperature = nn.Linear(dim, heads) if token else None
        self.value_temperature = nn.Linear(dim, self.kv_heads) if value else None
        for lin in (self.token_temperature, self.value_temperature):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.site = Site(name="selective", num_heads=heads, num_kv_heads=self.kv_heads)

    def query_temperature(self, x: Tensor) -> Tensor | None:
        """``τ(x_i, i)`` as ``[B, H, T, 1]``, or None when both query temperatures are off."""
        if self.alpha is None and self.token_temperature is None:
            return None
        T = x.shape[1]
        tau = x.new_ones(1, self.heads, T, 1)
        if self.alpha is not None:
            n = torch.arange(1, T + 1, device=x.device) if self.is_causal else torch.full((T,), T, device=x.device)
            log_n = torch.log(n.to(self.alpha.dtype))  # [T]
            tau = tau + torch.sigmoid(self.alpha)[:, None, None] * log_n[:, None]  # [1, H, T, 1]
        if self.token_temperature is not None:
            tau = tau + rearrange(torch.tanh(self.token_temperature(x)), "b t h -> b h t 1")  # [B, H, T, 1]
        return tau

    def forward(self, x: Tensor, mask=None) -> Tensor:
        self.check_input(x)
        q, k, v = self.project(x)  # [B, H, T, D], [B, Hkv, T, D] x2
        tau = self.query_temperature(x)
        if tau is not None:
            q = q * tau.to(q.dtype)  # [B, H, T, D]
        if self.value_temperature is not None:
            v = v * rearrange(1 + torch.tanh(self.value_temperature(x)), "b t h -> b h t 1")  # [B, Hkv, T, D]
        return self.merge(self.attend_heads(q, k, v, mask=mask))
