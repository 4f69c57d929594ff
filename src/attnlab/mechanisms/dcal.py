"""Paper 22: DCAL, dual cross-attention learning (GLCA and PWCA) beside a ViT's self-attention.

- Attention rollout finds the tokens the network relies on: with ``S_l`` the head-averaged
  attention of layer ``l``, ``Ŝ_l = S̄_l S̄_{l−1} ⋯ S̄_1`` where ``S̄ = 0.5·S + 0.5·I`` accounts for
  the residual path. The CLS row of ``Ŝ`` scores every patch.
- GLCA, global-local cross-attention: only the top ``R`` of the patch queries by that score
  (``R`` = 10% for fine-grained categorisation, 30% for re-identification) attend, globally, to
  the keys and values of all tokens: ``softmax(Q_local Kᵀ/√d) V``. GLCA has its own weights.
- PWCA, pair-wise cross-attention, a training-only regulariser: the queries of image 1 attend over
  the keys and values of images 1 and 2 concatenated, ``softmax(Q₁ [K₁; K₂]ᵀ/√d) [V₁; V₂]``, so
  the distractor image 2 dilutes the attention. PWCA shares the self-attention's weights and is
  removed at inference.

Self-attention and PWCA run through :func:`attnlab.core.attend` at ``self.site``, GLCA at
``self.glca_site``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register

__all__ = ["DCAL", "attention_rollout"]


def attention_rollout(maps: Sequence[Tensor]) -> Tensor:
    """Accumulated attention ``Ŝ = S̄_L ⋯ S̄_1`` with ``S̄ = 0.5·S + 0.5·I`` (paper 22, after Abnar & Zuidema).

    Args:
        maps: attention probabilities of layers ``1..L`` in order, each ``[B, H, T, T]`` (heads
            are averaged) or ``[B, T, T]``.

    Returns:
        ``[B, T, T]``; rows sum to 1 when the maps' rows do.
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one attention map, got none")
    rollout = None
    for s in maps:
        s = s.mean(1) if s.dim() == 4 else s  # [B, T, T]
        s_bar = 0.5 * s + 0.5 * torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
        rollout = s_bar if rollout is None else s_bar @ rollout  # later layers multiply on the left
    return rollout


@register("dcal", paper="22", layout="[B, T, C]", time="O(T²)", memory="O(T)")
class DCAL(nn.Module):
    """DCAL attention: self-attention, PWCA over an image pair (training), and GLCA from top-R queries.

    ``forward(x)`` is multi-head self-attention; ``forward(x, pair=x2)`` in training mode is PWCA,
    the queries of ``x`` attending over the tokens of ``x`` and ``x2``; ``glca(x, attention)`` is
    the GLCA branch.

    Paper: 22, Dual Cross-Attention Learning for Fine-Grained Visual Categorization and Object
    Re-Identification.

    Args:
        dim: model width ``C``.
        heads: attention heads; ``dim`` must be divisible by it.
        ratio: ``R``, the fraction of patch queries GLCA keeps (paper: 0.1 FGVC, 0.3 Re-ID).
        cls_token: token 0 is a CLS token: patches are scored by the CLS row of the rollout and
            the CLS query is always kept. Without one, a token's score is the mean of its rollout
            column (the accumulated attention it receives).
        backend: backend for :func:`attnlab.core.attend`.

    Shapes:
        x, pair ``[B, T, C]`` → ``[B, T, C]``; ``glca`` → ``([B, N, C], index [B, N])``.

    Example:
        >>> m = DCAL(dim=16, heads=2, ratio=0.5)
        >>> x = torch.randn(2, 9, 16)
        >>> m(x, pair=torch.randn(2, 9, 16)).shape
        torch.Size([2, 9, 16])
        >>> out, index = m.glca(x, [torch.softmax(torch.randn(2, 2, 9, 9), -1)])
        >>> out.shape, index.shape
        (torch.Size([2, 5, 16]), torch.Size([2, 5]))
    """

    def __init__(self, dim: int, heads: int, *, ratio: float = 0.1, cls_token: bool = True, backend: str = "auto"):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got ratio={ratio!r} (paper: 0.1 for FGVC, 0.3 for Re-ID)")
        self.dim, self.heads, self.ratio, self.cls_token, self.backend = dim, heads, float(ratio), cls_token, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.glca_qkv = nn.Linear(dim, 3 * dim)
        self.glca_proj = nn.Linear(dim, dim)
        self.site = Site(name="dcal", num_heads=heads, num_kv_heads=heads)
        self.glca_site = Site(name="dcal.glca", num_heads=heads, num_kv_heads=heads)

    def _check(self, x: Tensor, name: str) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must be [B, T, C] with C={self.dim}, got shape {tuple(x.shape)}")

    def _split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.heads).unbind(0)  # [B, H, T, D] each

    def forward(self, x: Tensor, pair: Tensor | None = None) -> Tensor:
        self._check(x, "x")
        q, k, v = self._split(self.qkv(x))
        if pair is not None:
            if not self.training:
                raise ValueError("PWCA is a training-time regulariser (paper 22): pass pair only in train mode, or call .train()")
            self._check(pair, "pair")
            if pair.shape[0] != x.shape[0]:
                raise ValueError(f"x and pair must share the batch, got {x.shape[0]} and {pair.shape[0]}")
            _, k2, v2 = self._split(self.qkv(pair))
            k, v = torch.cat([k, k2], dim=2), torch.cat([v, v2], dim=2)  # [B, H, T + T2, D]
        out = attend(q, k, v, backend=self.backend, site=self.site)  # [B, H, T, D]
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))

    def select(self, rollout: Tensor) -> Tensor:
        """Indices ``[B, N]`` (ascending) of the GLCA queries: the top ``ratio`` of the tokens by rollout score."""
        B, T, _ = rollout.shape
        if self.cls_token:
            score = rollout[:, 0, 1:]  # [B, T-1] CLS row over the patches
            n = max(1, round(self.ratio * (T - 1)))
            top = score.topk(n, dim=-1).indices + 1
            index = torch.cat([top.new_zeros(B, 1), top], dim=1)  # the CLS query always stays
        else:
            index = rollout.mean(1).topk(max(1, round(self.ratio * T)), dim=-1).indices
        return index.sort(dim=-1).values

    def glca(self, x: Tensor, attention: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Global-local cross-attention: the selected queries attend to every key and value.

        Args:
            x: tokens ``[B, T, C]``.
            attention: a rollout ``[B, T, T]``, or the attention maps of the layers so far (a
                list of ``[B, H, T, T]`` or ``[B, T, T]``) to roll out with :func:`attention_rollout`.

        Returns:
            ``(out [B, N, C], index [B, N])``: outputs of the selected queries, in token order.
        """
        self._check(x, "x")
        rollout = attention if isinstance(attention, Tensor) else attention_rollout(attention)
        if rollout.shape != (x.shape[0], x.shape[1], x.shape[1]):
            raise ValueError(f"rollout must be [B, T, T] = {[x.shape[0], x.shape[1], x.shape[1]]}, got shape {tuple(rollout.shape)}")
        index = self.select(rollout.detach())  # [B, N]
        q, k, v = self._split(self.glca_qkv(x))
        q = q.gather(2, index[:, None, :, None].expand(-1, self.heads, -1, q.shape[-1]))  # [B, H, N, D]
        out = attend(q, k, v, backend=self.backend, site=self.glca_site)  # [B, H, N, D]
        return self.glca_proj(rearrange(out, "b h n d -> b n (h d)")), index
