"""Multi-head attention: the baseline every other mechanism is compared with.

``mha`` is standard multi-head self-attention with the options that studies of attention turn
on and off: grouped/multi-query heads (``kv_heads``), causal masking, rotary position
embedding (``rope``), and two fixes from the papers:

- Paper 68 (Active-Dormant Attention Heads): ``attention="relu"`` replaces the softmax with
  ``ReLU(q·k/√D) / n``, where ``n`` is the number of keys the query may see (the query's
  1-based position under a causal mask, as in the authors' code). Without the softmax's
  sum-to-one constraint a head can stay dormant without an attention sink.
- Paper 73 (σReparam): ``sigma_reparam=True`` builds every linear layer as
  :class:`SigmaReparamLinear`, ``Ŵ = (γ / σ(W)) · W``, which bounds attention-logit growth and
  so prevents entropy collapse.

Both go through :func:`attnlab.core.attend` at ``self.site`` (ReLU attention as
``normalizer="relu"``; σReparam changes only the projections around it), so probes and edits
see every variant: a probe attached to a ReLU layer receives the ReLU weights, whose rows need
not sum to 1.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend, backends
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["MultiHeadAttention", "SigmaReparamLinear", "make_linear", "relu_attention", "rotary"]

_KINDS = ("softmax", "relu")


class SigmaReparamLinear(nn.Linear):
    """A linear layer with σReparam weights ``Ŵ = (γ / σ(W)) · W``.

    Paper: 73 (σReparam, "Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse").

    ``σ(W)`` is the spectral norm, estimated as ``uᵀ W v`` from singular-vector estimates ``u``,
    ``v`` (buffers) that one power-iteration step refines at every forward in training mode
    (no step in eval mode). Gradients flow through ``W`` in ``σ``, not through ``u`` and ``v``.
    ``u``, ``v`` start as ``W₀``'s exact top singular vectors (SVD) and ``γ`` (learnable) as the
    resulting estimate, so ``Ŵ₀ = W₀``. After changing ``weight`` in place, call
    :meth:`reset_sigma` to restore that.

    Shapes:
        ``[..., in_features] -> [..., out_features]``, like :class:`torch.nn.Linear`.

    Example:
        >>> layer = SigmaReparamLinear(8, 4)
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("u", torch.empty(out_features, device=device, dtype=self.weight.dtype))
        self.register_buffer("v", torch.empty(in_features, device=device, dtype=self.weight.dtype))
        self.gamma = nn.Parameter(torch.empty((), device=device, dtype=self.weight.dtype))
        self.reset_sigma()

    @torch.no_grad()
    def reset_sigma(self) -> None:
        """Set ``u``, ``v`` to ``W``'s top singular vectors and ``γ`` to ``σ(W)``, so that ``Ŵ = W``."""
        U, _, Vh = torch.linalg.svd(self.weight.float(), full_matrices=False)
        self.u.copy_(U[:, 0])
        self.v.copy_(Vh[0])
        self.gamma.copy_(self.sigma())

    @torch.no_grad()
    def power_step(self) -> None:
        """One power-iteration step: ``u ← W v / ‖W v‖``, ``v ← Wᵀ u / ‖Wᵀ u‖``."""
        self.u.copy_(F.normalize(self.weight @ self.v, dim=0))
        self.v.copy_(F.normalize(self.weight.T @ self.u, dim=0))

    def sigma(self) -> Tensor:
        """The spectral-norm estimate ``uᵀ W v`` (differentiable in ``W``)."""
        return torch.einsum("o,oi,i->", self.u, self.weight, self.v)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.power_step()
        return F.linear(x, self.gamma / self.sigma() * self.weight, self.bias)


def make_linear(in_features: int, out_features: int, *, bias: bool, sigma_reparam: bool) -> nn.Linear:
    """``nn.Linear``, or :class:`SigmaReparamLinear` when ``sigma_reparam`` (paper 73)."""
    return (SigmaReparamLinear if sigma_reparam else nn.Linear)(in_features, out_features, bias=bias)


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoPE) at positions ``0 .. T-1``, half-split pairing.

    Channel ``j`` and ``j + D/2`` form a pair rotated by angle ``t · base^(-2j/D)`` at position ``t``
    (the GPT-NeoX / Llama convention). Computed in float32 (float64 for float64 inputs).

    Shapes:
        ``x [B, H, T, D] -> [B, H, T, D]``, ``D`` even.

    Example:
        >>> rotary(torch.randn(1, 2, 5, 8)).shape
        torch.Size([1, 2, 5, 8])
    """
    T, D = x.shape[-2:]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=dt) / D)  # [D/2]
    angle = torch.arange(T, device=x.device, dtype=dt)[:, None] * inv_freq  # [T, D/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.to(dt).chunk(2, dim=-1)  # [B, H, T, D/2] each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)  # [B, H, T, D]


@register("mha", paper="68, 73", time="O(T²)", memory="O(T)")
class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with GQA/MQA, causal masking, RoPE, ReLU attention and σReparam.

    Paper: baseline; ``attention="relu"`` is paper 68 (Active-Dormant Attention Heads),
    ``sigma_reparam`` paper 73 (σReparam).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: query heads ``H``.
        kv_heads: key/value heads ``Hkv`` (``heads`` if None: MHA; 1: MQA; between: GQA).
        is_causal: each token attends only to itself and earlier tokens.
        rope: rotate queries and keys by their positions (RoPE) before attention.
        rope_base: RoPE's frequency base.
        attention: ``"softmax"``, or ``"relu"`` for ``ReLU(q·k/√D) / n_visible`` (paper 68).
        sigma_reparam: σReparam every linear layer (paper 73).
        bias: biases in the q/k/v/o projections.
        backend: backend for :func:`attnlab.core.attend` (``"auto"``, ``"sdpa"``, ...); ReLU
            attention needs ``"auto"`` or ``"reference"``.

    Shapes:
        ``x [B, T, C] -> [B, T, C]``; ``mask`` (optional) as in :func:`attnlab.core.attend`,
        combined with ``is_causal``.

    Example:
        >>> m = MultiHeadAttention(32, 4, kv_heads=2, is_causal=True, rope=True)
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
        attention: str = "softmax",
        sigma_reparam: bool = False,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        positive_ints(dim=dim, heads=heads, kv_heads=kv_heads)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if heads % kv_heads:
            raise ValueError(f"heads must be a multiple of kv_heads, got heads={heads}, kv_heads={kv_heads}")
        if attention not in _KINDS:
            raise ValueError(f"attention must be one of {_KINDS}, got attention={attention!r}")
        head_dim = dim // heads
        if rope and head_dim % 2:
            raise ValueError(f"rope needs an even head dim, got dim // heads = {head_dim}: change dim or heads")
        if not (isinstance(rope_base, numbers.Real) and rope_base > 0):
            raise ValueError(f"rope_base must be a positive number, got rope_base={rope_base!r}")
        if backend != "auto" and attention not in backends.get(backend).normalizers:  # get: unknown names raise
            raise ValueError(f"attention={attention!r} needs backend='auto' or 'reference', got backend={backend!r}")
        self.dim, self.heads, self.kv_heads, self.head_dim = dim, heads, kv_heads, head_dim
        self.is_causal, self.rope, self.rope_base = is_causal, rope, float(rope_base)
        self.attention, self.backend = attention, backend
        self.q_proj = make_linear(dim, heads * head_dim, bias=bias, sigma_reparam=sigma_reparam)
        self.k_proj = make_linear(dim, kv_heads * head_dim, bias=bias, sigma_reparam=sigma_reparam)
        self.v_proj = make_linear(dim, kv_heads * head_dim, bias=bias, sigma_reparam=sigma_reparam)
        self.o_proj = make_linear(heads * head_dim, dim, bias=bias, sigma_reparam=sigma_reparam)
        self.site = Site(name="mha", num_heads=heads, num_kv_heads=kv_heads)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``[B, H, T, D]``, keys and values ``[B, Hkv, T, D]`` (RoPE applied if enabled)."""
        return self.split_heads(self.q_proj(x), self.k_proj(x), self.v_proj(x))

    def split_heads(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected ``[B, T, H·D]`` and ``[B, T, Hkv·D]`` tensors as heads, RoPE applied if enabled."""
        q = rearrange(q, "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        k = rearrange(k, "b t (h d) -> b h t d", h=self.kv_heads)  # [B, Hkv, T, D]
        v = rearrange(v, "b t (h d) -> b h t d", h=self.kv_heads)  # [B, Hkv, T, D]
        if self.rope:
            q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
        return q, k, v

    def attend_heads(self, q: Tensor, k: Tensor, v: Tensor, *, mask=None, bias: Tensor | None = None) -> Tensor:
        """Per-head outputs ``[B, H, T, D]``: softmax or ReLU attention at ``self.site``."""
        return attend(
            q, k, v, mask=mask, bias=bias, is_causal=self.is_causal, backend=self.backend, site=self.site, normalizer=self.attention
        )

    def merge(self, out: Tensor) -> Tensor:
        """Concatenate heads and apply the output projection: ``[B, H, T, D] -> [B, T, C]``."""
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # [B, T, C]

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, T, C]`` with ``C = dim``."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got {got}")

    def forward(self, x: Tensor, mask=None) -> Tensor:
        self.check_input(x)
        q, k, v = self.project(x)
        return self.merge(self.attend_heads(q, k, v, mask=mask))


def relu_attention(q: Tensor, k: Tensor, v: Tensor, *, mask=None, bias: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """Paper 68's ReLU attention: ``Σ_j ReLU(q·k_j/√D + bias) v_j / n``, ``n`` = keys the query may see.

    :func:`attnlab.core.attend` with ``normalizer="relu"`` (the reference backend, in float32;
    float64 for float64 inputs), at the default site. A query that sees no key gets zeros.

    Shapes:
        ``q [B, H, Tq, D]``, ``k, v [B, Hkv, Tk, D]`` -> ``[B, H, Tq, D]``.
    """
    return attend(q, k, v, mask=mask, bias=bias, is_causal=is_causal, normalizer="relu")
