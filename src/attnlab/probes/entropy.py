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
from attnlab.probes._base import Findings, SiteProbe, grid, register

__all__ = ["Entropy"]


@register("entropy", paper="73, 68")
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

    min_tokens = 8
    min_tokens_reason = (
        "normalised entropy is defined only on rows that see two or more keys; a handful of rows gives a mean of little meaning"
    )

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        n = chunk.num_visible.expand(chunk.probs.shape[:3])  # [B, H, Tc] keys each query sees
        h = chunk.row_entropy  # [B, H, Tc], shared with other probes
        rows, norm_rows = n >= 1, n >= 2  # rows with one key count for entropy (0), not for normalised entropy
        hn = torch.where(norm_rows, h / torch.log(n.clamp(min=2).to(h.dtype)), 0.0)
        add = torch.stack(
            [torch.where(rows, h, 0.0).sum((0, 2)), rows.sum((0, 2)), hn.sum((0, 2)), norm_rows.sum((0, 2))]
        ).double()  # [4, H]
        self._acc[site.name] = self._acc.get(site.name, 0.0) + add

    def result(self) -> dict[str, dict[str, Tensor]]:
        """Per site: ``{"entropy": [H], "normalized": [H], "rows": [H]}`` (float64 means, row counts)."""
        return {
            name: {  # NaN where no row counted (undefined, not 0)
                "entropy": torch.where(c > 0, s / c.clamp(min=1), torch.nan),
                "normalized": torch.where(cn > 0, sn / cn.clamp(min=1), torch.nan),
                "rows": c,
            }
            for name, (s, c, sn, cn) in self._acc.items()
        }

    def findings(self, sites):
        r = self.result()
        norm = {k: v["normalized"] for k, v in r.items()}
        out = Findings().heatmap("normalized", "entropy (normalised)", grid(norm, sites))
        out.heatmap("nats", "entropy (nats)", grid({k: v["entropy"] for k, v in r.items()}, sites))
        flat = [(float(v), s.layer, h) for s in sites if s.name in norm for h, v in enumerate(norm[s.name]) if v == v]
        if flat:
            lo, hi = min(flat), max(flat)
            out.notes.append(
                f"Most focused head: layer {lo[1]} head {lo[2]} (normalised entropy {lo[0]:.2f}); most diffuse: layer {hi[1]} head {hi[2]} ({hi[0]:.2f})."
            )
        return out
