"""Paper 55: a codebook bottleneck that rewrites an embedding as a convex combination of a few learned codes.

"Selective visual representations" filter a visual embedding before the policy sees it: an MLP
scores ``K`` learned latent codes, a softmax turns the scores into convex weights, and the weighted
sum of codes is projected back up:

    p = softmax(W ReLU(e)) ∈ Δ^{K−1},    z = p C ∈ R^{D_c},    out = Linear(z) ∈ R^{C_out},

with ``C`` a ``[K, D_c]`` codebook. The output can only lie in the convex hull of ``K`` low-width
codes (the paper: ``K = 256`` codes of width ``D_c = 10``), so whatever the codes do not encode, such
as a distractor the task never needed, cannot pass. A one-hot ``p`` returns one projected code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["CodebookBottleneck"]


@register("codebook_bottleneck", paper="55")
class CodebookBottleneck(nn.Module):
    """Softmax over learned codes, their convex combination, and a linear map back up.

    Paper: 55, Selective Visual Representations Improve Convergence and Generalization for Embodied AI.

    Args:
        dim: input width ``C``.
        codes: number of codes ``K`` (256).
        code_dim: width ``D_c`` of each code (10).
        out_dim: output width, default ``dim``.

    Shapes:
        e ``[..., C]`` → out ``[..., out_dim]``; :meth:`weights` gives p ``[..., K]``.

    Example:
        >>> m = CodebookBottleneck(dim=32)
        >>> m(torch.randn(4, 7, 32)).shape
        torch.Size([4, 7, 32])
    """

    def __init__(self, dim: int, codes: int = 256, *, code_dim: int = 10, out_dim: int | None = None):
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        for name, v in {"dim": dim, "codes": codes, "code_dim": code_dim, "out_dim": out_dim}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        self.dim, self.codes = dim, codes
        self.score = nn.Linear(dim, codes)  # W
        self.codebook = nn.Parameter(nn.init.xavier_uniform_(torch.empty(codes, code_dim)))  # C
        self.up = nn.Linear(code_dim, out_dim)

    def weights(self, e: Tensor) -> Tensor:
        """The convex weights ``p = softmax(W ReLU(e))`` ``[..., K]``."""
        if e.dim() < 1 or e.shape[-1] != self.dim:
            raise ValueError(f"e must be [..., C] with C={self.dim}, got shape {tuple(e.shape)}")
        return self.score(e.relu()).softmax(-1)  # (..., K)

    def forward(self, e: Tensor) -> Tensor:
        p = self.weights(e)  # (..., K)
        return self.up(p @ self.codebook.to(p.dtype))  # (..., K) @ (K, D_c) -> (..., D_c) -> (..., out_dim)
