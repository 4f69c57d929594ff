"""Per-head attention entropy (papers 73 and 68).

Paper 73 (σReparam, entropy collapse) tracks the mean entropy of attention rows per head;
paper 68 (active-dormant heads) reads low-entropy heads as dormant. The normalised entropy
divides a row's entropy by the log of the number of keys it may see (1 = uniform attention,
0 = all mass on one key), so heads at different positions and lengths compare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import SiteProbe

__all__ = ["Entropy"]


class Entropy(SiteProbe):
    """Mean row entropy per head, raw (nats) and normalised by ``log(visible keys)``.

    Paper: 73 (σReparam: entropy collapse), 68 (active-dormant attention heads).
    Shapes: per site, ``entropy`` and ``normalized`` are ``[H]`` (averaged over batch and rows).

    Rows with no visible key are skipped; rows with one visible key count for ``entropy`` (0)
    but not for ``normalized`` (undefined).

    Example:
        >>> import attnlab
        >>> p = Entropy()
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[p])
        >>> p.result()["attend"]["entropy"].shape
        torch.Size([2])
    """

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        p = chunk.probs  # [B, H, Tc, Ts]
        n = chunk.num_visible.expand(p.shape[:3]).double()  # [B, H, Tc]
        h = -torch.xlogy(p, p).sum(-1).double()  # [B, H, Tc]
        rows = n >= 1
        norm_rows = n >= 2
        hn = torch.where(norm_rows, h / torch.log(n.clamp(min=2)), 0.0)
        acc = self._acc.setdefault(site.name, [0.0, 0.0, 0.0, 0.0])
        acc[0] = acc[0] + torch.where(rows, h, 0.0).sum((0, 2))
        acc[1] = acc[1] + rows.sum((0, 2))
        acc[2] = acc[2] + hn.sum((0, 2))
        acc[3] = acc[3] + norm_rows.sum((0, 2))

    def result(self) -> dict[str, dict[str, Tensor]]:
        """Per site: ``{"entropy": [H], "normalized": [H], "rows": [H]}`` (float64 means, row counts)."""
        return {
            name: {
                "entropy": s / c.clamp(min=1),
                "normalized": sn / cn.clamp(min=1),
                "rows": c,
            }
            for name, (s, c, sn, cn) in self._acc.items()
        }
