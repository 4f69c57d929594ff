"""Paper 50: the fast approximation of tensor attention, by the polynomial method, in O(T) instead of O(T³).

Tensor attention (:mod:`attnlab.mechanisms.tensor`) scores every pair of tokens,
``out_i = Σ_{j,l} softmax(⟨q_i, k1_j ∘ k2_l⟩ · scale)(v1_j ∘ v2_l)``: O(T³·d). Alman & Song
("How to capture higher-order correlations?") compute it fast by replacing ``exp`` with a
low-degree polynomial ``P(s) = Σ_{p≤P} s^p / p!`` and factoring it. Since
``(k1 ∘ k2)^{⊗p} = k1^{⊗p} ∘ k2^{⊗p}``,

    P(⟨q, k1_j ∘ k2_l⟩·scale) = Σ_f φ(q)_f ψ(k1_j)_f ψ(k2_l)_f,
    φ(q) = [scale^p q^{⊗p} / p!]_{p≤P},   ψ(k) = [k^{⊗p}]_{p≤P},

so the sum over pairs splits into two sums over tokens:

    Σ_{j,l} P(…)(v1_j ∘ v2_l) = Σ_f φ(q_i)_f (Σ_j ψ(k1_j)_f v1_j) ∘ (Σ_l ψ(k2_l)_f v2_l),

O(T·F·D) with ``F = Σ_p d^p`` features, and the normaliser likewise with ones for values.
``q, k1, k2`` are projected to ``feature_dim = d`` first (small, as Based does), so ``F`` stays
small. An even degree keeps ``P > 0`` (its minimum is positive), so the normaliser is positive.

``form="fast"`` is the factored sum; ``form="pairs"`` builds the ``T²`` pair scores and applies
``P`` to them, O(T³·d): the reference the two must agree with. The error against the exact
softmax tensor attention falls as the degree rises (Taylor's remainder, ``|s|^{P+1}/(P+1)!``).
Non-causal, as in the paper.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["TensorFast", "tensor_fast", "tensor_pairs_poly"]

FORMS = ("fast", "pairs")


MAX_FEATURES = 1 << 20  # Σ_p d^p features per head and position: 8^8 would need 16.8M (gigabytes at any length)


def _check_degree(degree, d: int | None = None) -> None:
    """An even degree ≥ 2; with ``d``, one whose feature map (Σ_{p ≤ degree} d^p features) fits :data:`MAX_FEATURES`."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2 or degree % 2:
        raise ValueError(f"degree must be an even int ≥ 2 (an odd Taylor polynomial of exp goes negative), got degree={degree!r}")
    features = 0 if d is None else sum(d**p for p in range(degree + 1))
    if features > MAX_FEATURES:
        raise ValueError(
            f"degree={degree} with feature dimension {d} needs {features:,} features per head and position "
            f"(more than {MAX_FEATURES:,}): lower degree or feature_dim"
        )


def _powers(x: Tensor, degree: int) -> list[Tensor]:
    """``[x^{⊗0}, …, x^{⊗P}]`` flattened: ``[..., d^p]`` each."""
    out, cur = [x.new_ones(*x.shape[:-1], 1)], x.new_ones(*x.shape[:-1], 1)
    for _ in range(degree):
        cur = rearrange(cur[..., :, None] * x[..., None, :], "... i j -> ... (i j)")  # [..., d^p]
        out.append(cur)
    return out


def tensor_fast(q: Tensor, k1: Tensor, k2: Tensor, v1: Tensor, v2: Tensor, *, scale: float, degree: int = 2) -> Tensor:
    """Tensor attention with ``exp`` replaced by its degree-``P`` Taylor polynomial, factored: O(T·F·D).

    Shapes: ``q [B, H, Tq, d]``; ``k1, k2 [B, H, Tk, d]``; ``v1, v2 [B, H, Tk, D]`` -> ``[B, H, Tq, D]``.

    Example:
        >>> q, k1, k2 = torch.randn(3, 1, 2, 4, 3).unbind(0)
        >>> v1, v2 = torch.randn(2, 1, 2, 4, 8).unbind(0)
        >>> tensor_fast(q, k1, k2, v1, v2, scale=0.5).shape
        torch.Size([1, 2, 4, 8])
    """
    _check_degree(degree, q.shape[-1])
    phi = torch.cat([scale**p / math.factorial(p) * t for p, t in enumerate(_powers(q, degree))], dim=-1)  # [B, H, Tq, F]
    psi1, psi2 = torch.cat(_powers(k1, degree), dim=-1), torch.cat(_powers(k2, degree), dim=-1)  # [B, H, Tk, F]
    ones = v1.new_ones(*v1.shape[:-1], 1)
    s1 = torch.matmul(psi1.transpose(-1, -2), torch.cat([v1, ones], dim=-1))  # [B, H, F, D + 1] Σ_j ψ(k1_j) [v1_j, 1]
    s2 = torch.matmul(psi2.transpose(-1, -2), torch.cat([v2, ones], dim=-1))  # [B, H, F, D + 1]
    y = torch.matmul(phi, s1 * s2)  # [B, H, Tq, D + 1] numerator and normaliser
    return y[..., :-1] / y[..., -1:]


def tensor_pairs_poly(q: Tensor, k1: Tensor, k2: Tensor, v1: Tensor, v2: Tensor, *, scale: float, degree: int = 2) -> Tensor:
    """The same, over the ``T²`` explicit pairs: ``Σ_{j,l} P(s_ijl)(v1_j ∘ v2_l) / Σ_{j,l} P(s_ijl)``, O(T³·d) (the reference).

    Shapes: as :func:`tensor_fast`.
    """
    _check_degree(degree)
    s = torch.einsum("bhid,bhjd,bhld->bhijl", q, k1, k2) * scale  # [B, H, Tq, Tk, Tk]
    w = sum(s**p / math.factorial(p) for p in range(degree + 1))
    y = torch.einsum("bhijl,bhjd,bhld->bhid", w, v1, v2)  # [B, H, Tq, D]
    return y / w.sum((-1, -2))[..., None]


@register("tensor_fast", paper="50", time="O(T·F·D)", memory="O(T·F + F·D)")
class TensorFast(nn.Module):
    """Fast tensor attention: ``exp`` of the pair scores by a Taylor polynomial, factored into two sums over tokens.

    Paper: 50 (Kronecker / tensor attention), Alman & Song's polynomial-method approximation.
    Shapes: ``x [B, T, C] -> [B, T, C]``; per head ``D = C / heads``; ``q, k1, k2`` of width
    ``d = feature_dim``; ``F = Σ_{p≤degree} d^p`` features.

    Args:
        dim: model width ``C``.
        heads: number of heads.
        form: ``"fast"`` (factored, O(T)) or ``"pairs"`` (explicit pairs, O(T³), the reference).
        feature_dim: ``d``, the width of ``q, k1, k2``.
        degree: ``P``, the even degree of the Taylor polynomial.
        scale: multiplies the pair scores; default ``1 / d`` as tensor attention's.

    Example:
        >>> m = TensorFast(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "fast", feature_dim: int = 8, degree: int = 2, scale: float | None = None):
        super().__init__()
        positive_ints(dim=dim, heads=heads, feature_dim=feature_dim)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got form={form!r}")
        _check_degree(degree, feature_dim if form == "fast" else None)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(f"scale must be a positive float or None (1/feature_dim), got scale={scale!r}")
        self.dim, self.heads, self.form, self.feature_dim, self.degree = dim, heads, form, feature_dim, degree
        self.scale = 1.0 / feature_dim if scale is None else float(scale)
        self.qk = nn.Linear(dim, 3 * heads * feature_dim)  # q, k1, k2
        self.v = nn.Linear(dim, 2 * dim)  # v1, v2
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        q, k1, k2 = rearrange(self.qk(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)  # [B, H, T, d] each
        v1, v2 = rearrange(self.v(x), "b t (two h d) -> two b h t d", two=2, h=self.heads)  # [B, H, T, D] each
        fn = tensor_fast if self.form == "fast" else tensor_pairs_poly
        y = fn(q, k1, k2, v1, v2, scale=self.scale, degree=self.degree)  # [B, H, T, D]
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))  # [B, T, C]
