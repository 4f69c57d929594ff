"""Paper 34: ITHP, a two-stage information bottleneck that distils a prime modality through the others.

Information-theoretic hierarchical perception keeps one modality as the prime ``X₀`` and passes
it through two stochastic bottlenecks (variational encoders), each made to keep what predicts
the next modality and nothing else:

    X₀ → B₀ → B₁,    L_IB = I(X₀; B₀) − β I(B₀; X₁) + λ [ I(B₀; B₁) − γ I(B₁; X₂) ]

with the paper's defaults β = 8, γ = 32, λ = 0.3. The mutual informations are replaced by their
variational bounds, as in a VAE: ``I(X; B) ≤ KL(q(B | X) ‖ N(0, I))`` and
``−I(B; Y) ≤ ‖Y − dec(B)‖² / 2`` up to constants (a Gaussian decoder of unit variance). ``B₁`` is
the representation a downstream head reads (its loss is added to ``L_IB`` by the caller).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["ITHP"]


def _mlp(i: int, hidden: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, o))


@register("ithp", paper="34")
class ITHP(nn.Module):
    """Two stacked variational information bottlenecks from the prime modality, each predicting the next modality.

    Paper: 34, ITHP (Neuro-Inspired Information-Theoretic Hierarchical Perception for Multimodal Learning).

    Args:
        dims: widths of the prime modality and the two others, ``(D₀, D₁, D₂)``.
        latent: widths of ``B₀`` and ``B₁`` (default ``(16, 16)``).
        hidden: hidden width of every encoder and decoder MLP (default 64).
        beta, gamma, lam: the loss weights β, γ, λ (defaults 8, 32, 0.3).

    Shapes:
        x0 ``[B, D₀]`` → ``B₁`` ``[B, latent[1]]`` (sampled in training, the mean in eval);
        :meth:`loss` (x0, x1 ``[B, D₁]``, x2 ``[B, D₂]``) → dict of scalars ``total, kl0, rec1, kl1, rec2``
        and ``b1 [B, latent[1]]``.

    Example:
        >>> m = ITHP((20, 8, 6))
        >>> out = m.loss(torch.randn(4, 20), torch.randn(4, 8), torch.randn(4, 6))
        >>> out["b1"].shape, sorted(k for k in out if k != "b1")
        (torch.Size([4, 16]), ['kl0', 'kl1', 'rec1', 'rec2', 'total'])
    """

    def __init__(
        self,
        dims: tuple[int, int, int],
        *,
        latent: tuple[int, int] = (16, 16),
        hidden: int = 64,
        beta: float = 8.0,
        gamma: float = 32.0,
        lam: float = 0.3,
    ):
        super().__init__()
        sizes = (*tuple(dims), *tuple(latent), hidden) if isinstance(dims, (tuple, list)) and isinstance(latent, (tuple, list)) else ()
        if len(sizes) != 6 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sizes):
            raise ValueError(
                f"dims must be 3 positive widths (D0, D1, D2), latent 2 and hidden one, got dims={dims!r}, latent={latent!r}, hidden={hidden!r}"
            )
        for name, v in (("beta", beta), ("gamma", gamma), ("lam", lam)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a non-negative weight, got {name}={v!r}")
        self.dims, self.beta, self.gamma, self.lam = tuple(dims), float(beta), float(gamma), float(lam)
        (d0, d1, d2), (l0, l1) = dims, latent
        self.enc0, self.dec1 = _mlp(d0, hidden, 2 * l0), _mlp(l0, hidden, d1)  # X₀ → (μ₀, log σ₀²); B₀ → X̂₁
        self.enc1, self.dec2 = _mlp(l0, hidden, 2 * l1), _mlp(l1, hidden, d2)  # B₀ → (μ₁, log σ₁²); B₁ → X̂₂

    def _sample(self, stats: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = stats.chunk(2, dim=-1)  # (B, L) each
        b = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean()  # KL(N(μ, σ²) ‖ N(0, I)), mean over the batch
        return b, kl

    def _check(self, name: str, x: Tensor, i: int, batch: int | None = None) -> None:
        if x.dim() != 2 or x.shape[-1] != self.dims[i] or (batch is not None and x.shape[0] != batch):
            raise ValueError(f"{name} must be [B, D{i}] with D{i}={self.dims[i]} and the batch of x0, got shape {tuple(x.shape)}")

    def forward(self, x0: Tensor) -> Tensor:
        self._check("x0", x0, 0)
        b0, _ = self._sample(self.enc0(x0))  # (B, L0)
        return self._sample(self.enc1(b0))[0]  # (B, L1)

    def loss(self, x0: Tensor, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        """``L_IB = kl0 + β·rec1 + λ (kl1 + γ·rec2)`` and its terms (squared errors summed over features, halved, batch mean)."""
        self._check("x0", x0, 0)
        self._check("x1", x1, 1, x0.shape[0])
        self._check("x2", x2, 2, x0.shape[0])
        b0, kl0 = self._sample(self.enc0(x0))  # (B, L0)
        b1, kl1 = self._sample(self.enc1(b0))  # (B, L1)
        rec1 = 0.5 * (self.dec1(b0) - x1).pow(2).sum(-1).mean()
        rec2 = 0.5 * (self.dec2(b1) - x2).pow(2).sum(-1).mean()
        total = kl0 + self.beta * rec1 + self.lam * (kl1 + self.gamma * rec2)
        return {"total": total, "kl0": kl0, "rec1": rec1, "kl1": kl1, "rec2": rec2, "b1": b1}
