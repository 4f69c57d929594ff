"""Paper 36 (PrimeComposer): region-constrained cross-attention, as an edit on a diffusion model's cross-attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.edits._base import SiteEdit, register
from attnlab.edits._regions import at_grid


@register("region_cross_attention", paper="36")
class RegionCrossAttention(SiteEdit):
    """A subject's text tokens are seen only by the pixels inside its region (logit ``-inf`` outside).

    Paper: 36, PrimeComposer region-constrained cross-attention. Tokens of no subject (the start
    token, the background words) stay visible to every pixel, so every row keeps a key.

    Args:
        regions: bool ``[N, H, W]``, subject ``i``'s region at the latent's resolution.
        tokens: for each subject, the indices of its text tokens.
        sites: the sites to act at (default ``"*.attn2"``, every cross-attention of a diffusers model).

    Shapes:
        logits ``[B, H, Tq, Tk]``: ``Tq = h·w`` pixels, ``Tk`` text tokens.
    """

    stage = "logits"
    caveat = "acts at sites with a query grid only (a diffusion model instrumented by attnlab.models.diffusers); elsewhere it raises"

    def __init__(self, regions: Tensor, tokens: Sequence[Sequence[int]], sites="*.attn2"):
        super().__init__(sites=sites)
        if not isinstance(regions, Tensor) or regions.dim() != 3 or regions.dtype != torch.bool:
            raise ValueError(f"region_cross_attention: regions must be a bool [N, H, W] tensor, got {regions!r:.80}")
        if len(tokens) != regions.shape[0]:
            raise ValueError(
                f"region_cross_attention: got {regions.shape[0]} regions but {len(tokens)} token lists: give one list per region"
            )
        self.regions, self.tokens = regions, [list(t) for t in tokens]

    def function(self, site):
        inside = at_grid(self.regions, site, "region_cross_attention")  # [N, h*w]

        n = 1 + max((max(t) for t in self.tokens if t), default=-1)
        owner = torch.full((n,), -1, dtype=torch.long)
        for i, toks in enumerate(self.tokens):
            owner[toks] = i  # [n] the subject each token belongs to, -1 for none

        def constrain(score, b, h, q_idx, kv_idx):
            o = torch.where(kv_idx < n, owner.to(score.device)[kv_idx.clamp(max=max(n - 1, 0))], -1) if n else torch.full_like(kv_idx, -1)
            seen = (o < 0) | inside.to(score.device)[o.clamp(min=0), q_idx]
            return torch.where(seen, score, float("-inf"))

        return constrain
