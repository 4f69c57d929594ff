"""Paper 50: tensor (Kronecker) attention, softmax over pairs of keys.

Third-order attention (Sanford et al., "Representational strengths and limitations of
transformers"; Alman & Song, "How to capture higher-order correlations? Generalizing matrix
softmax attention to Kronecker computation") lets a query score *pairs* of tokens ``(j, l)``:

    out_i = Σ_{j,l} softmax_{(j,l)}(⟨q_i, k1_j ∘ k2_l⟩ / d) (v1_j ∘ v2_l),

with ``∘`` the elementwise product and ``d`` the head dimension (Alman & Song scale by ``1/d``,
not ``1/sqrt(d)``). The ``T²`` pair keys ``k1_j ∘ k2_l`` and pair values ``v1_j ∘ v2_l`` are
built explicitly and handed to :func:`attnlab.core.attend`, so the whole computation is one
attention site that probes and edits see (with ``T²`` keys, pair ``(j, l)`` at index
``j·T + l``). Cost: O(T³·d) time, O(T²·d) memory for the pair keys.

With ``k2 = v2 = 1`` every pair ``(j, ·)`` has ``k1_j``'s logit and ``v1_j``'s value, so the
``T`` copies cancel in the softmax and tensor attention is softmax attention over ``k1, v1``
with scale ``1/d``.
"""

from __future__ import annotations

import numbers

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["TensorAttention", "tensor_attention"]


def tensor_attention(
    q: Tensor,
    k1: Tensor,
    k2: Tensor,
    v1: Tensor,
    v2: Tensor,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    backend: str = "auto",
    site: Site | None = None,
) -> Tensor:
    """Tensor attention ``Σ_{j,l} softmax(⟨q_i, k1_j∘k2_l⟩·scale)(v1_j∘v2_l)`` through one ``attend`` call.

    Paper: 50 (Kronecker / tensor attention).
    Shapes: ``q [B, H, Tq, D]``; ``k1, v1 [B, H, T1, D]``; ``k2, v2 [B, H, T2, D]`` -> ``[B, H, Tq, D]``.

    Args:
        q, k1, k2, v1, v2: queries, the two key sets and the two value sets.
        scale: multiplies the pair logits; default ``1 / D`` (the paper's).
        is_causal: query ``i`` sees pair ``(j, l)`` only if ``j <= i`` and ``l <= i``.
        backend: the :func:`attnlab.core.attend` backend.
        site: the attention site (``T1·T2`` keys, pair ``(j, l)`` at ``j·T2 + l``).

    Example:
        >>> q, k1, k2, v1, v2 = torch.randn(5, 1, 2, 4, 8).unbind(0)
        >>> tensor_attention(q, k1, k2, v1, v2).shape
        torch.Size([1, 2, 4, 8])
    """
    if k1.shape != v1.shape or k2.shape != v2.shape:
        raise ValueError(
            f"k1/v1 and k2/v2 must have equal shapes, got k1={tuple(k1.shape)}, v1={tuple(v1.shape)}, k2={tuple(k2.shape)}, v2={tuple(v2.shape)}"
        )
    Tq, T1, T2, D = q.shape[2], k1.shape[2], k2.shape[2], q.shape[3]
    k = rearrange(k1[:, :, :, None] * k2[:, :, None], "b h j l d -> b h (j l) d")  # [B, H, T1·T2, D]
    v = rearrange(v1[:, :, :, None] * v2[:, :, None], "b h j l d -> b h (j l) d")  # [B, H, T1·T2, D]
    mask = None
    if is_causal:
        if not Tq == T1 == T2:
            raise ValueError(f"is_causal needs one length for queries and both key sets, got Tq={Tq}, T1={T1}, T2={T2}")
        i = torch.arange(Tq, device=q.device)
        last = torch.maximum(i[:, None], i[None, :]).flatten()  # [T²] the later token of pair (j, l)
        mask = i[:, None] >= last[None, :]  # [Tq, T²]
    return attend(q, k, v, mask=mask, scale=1.0 / D if scale is None else scale, backend=backend, site=site)


@register("tensor", paper="50", time="O(T³·D)", memory="O(T²·D)")
class TensorAttention(nn.Module):
    """Tensor attention: each query attends over all ``T²`` pairs of tokens with key ``k1_j∘k2_l``, value ``v1_j∘v2_l``.

    Paper: 50 (Kronecker / tensor attention), ``softmax(⟨q_i, k1_j∘k2_l⟩ / d)(v1_j∘v2_l)``.
    Shapes: ``x [B, T, C] -> [B, T, C]``; per head ``d = C / heads``; the site sees ``T²`` keys.

    Args:
        dim: model width ``C``.
        heads: number of heads.
        scale: logit scale; default ``1 / d`` as in the paper.
        is_causal: query ``i`` sees pairs of tokens ``j, l <= i``.
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = TensorAttention(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, scale: float | None = None, is_causal: bool = False, backend: str = "auto"):
        super().__init__()
        positive_ints(dim=dim, heads=heads)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale <= 0):
            raise ValueError(f"scale must be a positive float or None (1/d), got scale={scale!r}")
        self.dim, self.heads, self.scale, self.is_causal, self.backend = dim, heads, scale, is_causal, backend
        self.qkv = nn.Linear(dim, 5 * dim)  # q, k1, k2, v1, v2
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="tensor", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        q, k1, k2, v1, v2 = rearrange(self.qkv(x), "b t (five h d) -> five b h t d", five=5, h=self.heads)  # [B, H, T, D] each
        out = tensor_attention(q, k1, k2, v1, v2, scale=self.scale, is_causal=self.is_causal, backend=self.backend, site=self.site)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))  # [B, T, C]
