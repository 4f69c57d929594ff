"""Per-key column mass: how much attention each key receives (papers 68, 47, 12).

The column sum of the attention matrix is the quantity behind attention sinks: paper 68 reads
the mass on the first token, paper 47 (ACT) and paper 12 (VAR) find sink columns by mass per
visible query. This probe accumulates the column sums, per head, streamed over query chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import SiteProbe, register

__all__ = ["ColumnMass"]


@register("column_mass", paper="68, 47, 12")
class ColumnMass(SiteProbe):
    """Sum over query rows of the attention each key receives, per batch item and head.

    Paper: 68 (active-dormant heads, BOS mass), 47 (ACT hidden sinks), 12 (VAR).
    Shapes: per site, ``mass`` is ``[B, H, Tk]`` and ``queries`` ``[B|1, H|1, Tk]`` (how many
    queries could see each key, for mass per visible query).

    Example:
        >>> import attnlab
        >>> p = ColumnMass()
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[p])
        >>> p.result()["attend"]["mass"].sum(-1).round()  # every row sums to 1: 6 rows per head
        tensor([[6., 6.]], dtype=torch.float64)
    """

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        p = chunk.probs  # [B, H, Tc, Ts]
        B, H, _, Ts = p.shape
        acc = self._acc.get(site.name)
        if acc is None:
            vis_shape = chunk.visible.shape[:2]
            acc = self._acc[site.name] = [
                torch.zeros(B, H, chunk.lk, dtype=torch.float64, device=p.device),
                torch.zeros(*vis_shape, chunk.lk, dtype=torch.float64, device=p.device),
            ]
        if acc[0].shape != (B, H, chunk.lk):
            raise ValueError(
                f"ColumnMass at {site.name} has accumulated [B, H, Tk] = {list(acc[0].shape)}, got {[B, H, chunk.lk]}: "
                "it sums inputs of one shape; call reset() between inputs of different shapes"
            )
        span = slice(chunk.kv_start, chunk.kv_start + Ts)
        acc[0][:, :, span] += chunk.column_sum.double()
        acc[1][:, :, span] += chunk.visible.sum(2).double()

    def result(self) -> dict[str, dict[str, Tensor]]:
        """Per site: ``{"mass": [B, H, Tk], "queries": [B|1, H|1, Tk]}`` (float64)."""
        return {name: {"mass": m, "queries": n} for name, (m, n) in self._acc.items()}
