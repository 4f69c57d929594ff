"""Paper 1: a single attention layer with random features (Fu, Guo, Bai, Mei 2023).

A query token ``x0`` attends to ``N`` key tokens ``x_1..x_N`` through ``M`` heads. Head ``m`` has
a frozen random query-key matrix ``W_m`` and a trained value vector ``v_m``:

    f(x0, X) = Σ_m (1/N) Σ_i σ(x̃0ᵀ W_m x̃_i) · ⟨v_m, x̃_i⟩,     σ = ReLU,   x̃ = [x; 1].

The constant coordinate of ``x̃`` (``bias=True``, as in the paper) matters: without it ``f`` is odd,
``f(−x0, −X) = −f(x0, X)``, so it cannot fit even targets such as ``(1/N) Σ_i ⟨x0, x_i⟩³`` on
sign-symmetric inputs (it predicts 0 at best); ``bias=False`` keeps that form for study.

With ``W`` frozen the model is linear in ``V = (v_1..v_M)``: ``f = ⟨V, Φ(x0, X)⟩`` with the
features ``Φ_m = (1/N) Σ_i σ(x̃0ᵀ W_m x̃_i) x̃_i``, so ``V`` is fitted by ridge regression in closed
form (:meth:`RandomFeatureAttention.fit`). ``W_m`` is Gaussian with zero mean, or with mean
``W0 = diag(I_d, 0)`` (``W_m = W0 + G``), the biased sampling the paper shows learns
``Σ_i ⟨x0, x_i⟩^k``-type targets with fewer samples.

This is not softmax attention (no softmax, no normalisation over keys): plain PyTorch, no site.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.mechanisms import register

__all__ = ["RandomFeatureAttention"]

_MEANS = ("zero", "identity")


@register("random_features", paper="1", layout="[B, C] + [B, T, C] -> [B]", time="O(M·C·(C + T))", memory="O(M·T)")
class RandomFeatureAttention(nn.Module):
    """A random-feature attention layer: frozen Gaussian ``W_m``, trained values ``v_m``.

    Paper: 1 (What can a single attention layer learn? A study through the random features lens).
    Shapes: ``x0 [B, C]`` and ``X [B, T, C]`` → ``[B]`` (one scalar per sequence, as in the paper).

    Args:
        dim: token dimension ``C`` (the paper's ``d``).
        heads: number of random heads ``M`` (the paper's random features).
        mean: ``"zero"`` (``W_m`` has i.i.d. ``N(0, std²)`` entries) or ``"identity"``
            (``W_m = diag(I_C, 0) + G`` with that ``G``: the paper's biased random features).
        std: standard deviation of the Gaussian entries of ``G``.
        bias: append the constant coordinate to every token, ``x̃ = [x; 1]`` (the paper's
            form); ``False`` uses raw tokens, an odd function of the input.

    ``W`` is a buffer (never trained, saved in the state dict); ``v`` is the only parameter and
    starts at zero: train it, or call :meth:`fit`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = RandomFeatureAttention(8, 64)
        >>> x0, X = torch.randn(32, 8), torch.randn(32, 16, 8)
        >>> m.fit(x0, X, torch.randn(32), ridge=1e-2)(x0, X).shape
        torch.Size([32])
    """

    def __init__(self, dim: int, heads: int, *, mean: str = "zero", std: float = 0.5, bias: bool = True):
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if mean not in _MEANS:
            raise ValueError(f"mean must be one of {_MEANS}, got mean={mean!r}")
        if not std > 0:
            raise ValueError(f"std must be positive, got std={std}")
        self.dim, self.heads, self.mean, self.std, self.bias = dim, heads, mean, std, bias
        width = dim + 1 if bias else dim  # C̃
        W = torch.randn(heads, width, width) * std  # [M, C̃, C̃]
        if mean == "identity":
            W[:, range(dim), range(dim)] += 1.0  # diag(I_C, 0)
        self.register_buffer("W", W)
        self.v = nn.Parameter(torch.zeros(heads, width))  # [M, C̃]

    def features(self, x0: Tensor, X: Tensor) -> Tensor:
        """``Φ_m = (1/N) Σ_i σ(x̃0ᵀ W_m x̃_i) x̃_i``, ``[B, M, C̃]``: ``f`` is ``⟨v, Φ⟩``."""
        if X.dim() != 3 or X.shape[-1] != self.dim or x0.shape != (X.shape[0], self.dim):
            raise ValueError(f"expected x0 [B, {self.dim}] and X [B, T, {self.dim}], got x0 {tuple(x0.shape)} and X {tuple(X.shape)}")
        N = X.shape[1]
        if self.bias:
            x0 = torch.cat([x0, x0.new_ones(x0.shape[0], 1)], dim=-1)  # [B, C̃]
            X = torch.cat([X, X.new_ones(*X.shape[:2], 1)], dim=-1)  # [B, N, C̃]
        W = self.W.to(X.dtype)
        s = torch.einsum("bc,mcd,bnd->bmn", x0, W, X)  # [B, M, N] scores x0ᵀ W_m x_i
        return torch.einsum("bmn,bnd->bmd", torch.relu(s), X) / N  # [B, M, C̃]

    def forward(self, x0: Tensor, X: Tensor) -> Tensor:
        return torch.einsum("bmc,mc->b", self.features(x0, X), self.v.to(X.dtype))  # [B]

    @torch.no_grad()
    def fit(self, x0: Tensor, X: Tensor, y: Tensor, *, ridge: float) -> RandomFeatureAttention:
        """Set ``v`` to the ridge solution ``argmin_v (1/n) Σ_j (f(x0_j, X_j) - y_j)² + ridge·‖v‖²``.

        With ``Φ`` the ``[n, M·C̃]`` feature matrix: ``v = (ΦᵀΦ/n + ridge·I)⁻¹ Φᵀy/n``, solved in
        float64 (in its dual form ``Φᵀ(ΦΦᵀ/n + ridge·I)⁻¹ y/n`` when ``n < M·C``).

        Returns:
            the module itself, fitted.
        """
        if not ridge > 0:
            raise ValueError(f"ridge must be positive, got ridge={ridge}")
        n = X.shape[0]
        if y.shape != (n,):
            raise ValueError(f"y must be [n] = [{n}] targets, one per sequence, got shape {tuple(y.shape)}")
        Phi = self.features(x0, X).reshape(n, -1).double()  # [n, P], P = M·C̃
        y = y.double()
        P = Phi.shape[1]
        if n < P:
            alpha = torch.linalg.solve(Phi @ Phi.T / n + ridge * torch.eye(n, dtype=Phi.dtype, device=Phi.device), y / n)  # [n]
            v = Phi.T @ alpha  # [P]
        else:
            v = torch.linalg.solve(Phi.T @ Phi / n + ridge * torch.eye(P, dtype=Phi.dtype, device=Phi.device), Phi.T @ y / n)  # [P]
        self.v.copy_(v.view(self.v.shape))
        return self
