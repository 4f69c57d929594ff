"""Paper 4 (PAINT): per-head visual sensitivity, the attention a query row gives to the image tokens.

PAINT boosts the image tokens in the last query row because their attention fades in deeper
layers. This probe measures that, per layer and head, over a key span ``S`` (a vision-language
input's ``spans.image``; :class:`attnlab.core.spans.Spans`) and the query rows ``R`` (``"last"``,
the token being generated, as PAINT edits it; or positions):

    mass[h]  = mean_{q ∈ R} Σ_{k ∈ S} A_h[q, k]
    ratio[h] = mass[h] / mean_{q ∈ R} (|S ∩ visible(q)| / |visible(q)|)

``mass`` is the share of the row on the image; ``ratio`` compares it with the share a uniform row
would give (1: no preference, above 1: the head looks at the image more than at a random token).
Comparing both before and with ``emphasis`` shows PAINT's effect per head. Only the selected rows'
sums are kept: ``O(H)`` per site.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.core.spans import check_span
from attnlab.probes._base import Findings, SiteProbe, grid, register

__all__ = ["VisualSensitivity", "span_columns"]


def span_columns(chunk: AttentionChunk, keys: Tensor) -> tuple[Tensor, Tensor]:
    """The chunk's columns of key positions ``keys`` ``[S]``: ``(probs [B, H, Tc, S], visible [B|1, H|1, Tc, S])``.

    Keys outside the chunk's span ``kv_start .. kv_start + Ts − 1`` get weight 0 and are not visible.
    """
    Ts = chunk.probs.shape[-1]
    local = keys.to(chunk.probs.device) - chunk.kv_start  # [S]
    inside = (local >= 0) & (local < Ts)  # [S]
    cols = local.clamp(0, max(Ts - 1, 0))
    probs = torch.where(inside, chunk.probs[..., cols], 0.0) if Ts else chunk.probs.new_zeros(*chunk.probs.shape[:-1], len(keys))
    visible = (chunk.visible[..., cols] & inside) if Ts else torch.zeros(*chunk.visible.shape[:-1], len(keys), dtype=torch.bool)
    return probs, visible


@register("visual_sensitivity", paper="4")
class VisualSensitivity(SiteProbe):
    """Per head, the mass of chosen query rows on a key span (the image) and its ratio to a uniform row's.

    Paper: 4 (PAINT, imbalanced attention).
    Shapes: per site, ``mass`` and ``ratio`` are ``[B, H]``.

    Args:
        keys: the key span (``spans.image``) or key positions.
        rows: ``"last"`` (the last query of the input) or query positions.
        sites: which sites to observe.

    Example:
        >>> import attnlab
        >>> p = VisualSensitivity(keys=[0, 1, 2])
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[p])
        >>> p.result()["attend"]["mass"].shape
        torch.Size([1, 2])
    """

    def __init__(self, keys=None, rows="last", sites=None):
        super().__init__(sites)
        if keys is None or len(keys) == 0:
            raise ValueError("visual_sensitivity needs the key span: keys=spans.image (or key positions)")
        if rows != "last" and (isinstance(rows, str) or not rows):
            raise ValueError(f"visual_sensitivity: rows must be 'last' or query positions, got rows={rows!r}")
        self._keys_spec = keys
        self.keys = torch.tensor(sorted({int(k) for k in keys}))  # [S]
        self.rows = rows

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        check_span(self._keys_spec, chunk.lk, "visual_sensitivity keys")
        wanted = [chunk.lk - 1] if self.rows == "last" else list(self.rows)
        sel = torch.isin(chunk.q_idx, torch.tensor(wanted, device=chunk.q_idx.device))  # [Tc]
        if not bool(sel.any()):
            return
        probs, visible = span_columns(chunk, self.keys)  # [B, H, Tc, S], [B|1, H|1, Tc, S]
        mass = probs[:, :, sel].sum(-1).double()  # [B, H, R]
        n_vis = chunk.num_visible[..., sel].double().clamp_min(1)  # [B|1, H|1, R]
        uniform = visible[..., sel, :].sum(-1).double() / n_vis  # [B|1, H|1, R]
        acc = self._acc.setdefault(site.name, [0.0, 0.0, 0])
        acc[0] = acc[0] + mass.sum(-1)
        acc[1] = acc[1] + uniform.sum(-1)
        acc[2] += int(sel.sum())

    def result(self) -> dict[str, dict[str, Tensor]]:
        """Per site: ``{"mass": [B, H], "ratio": [B, H]}`` (float64), means over the selected rows."""
        out = {}
        for name, (m, u, n) in self._acc.items():
            mass, uniform = m / n, u / n
            out[name] = {"mass": mass, "ratio": mass / torch.as_tensor(uniform).clamp_min(1e-12)}
        return out

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        return (
            Findings()
            .heatmap("image_mass", "attention mass on the key span (image)", grid({k: v["mass"][0] for k, v in r.items()}, sites))
            .heatmap("image_ratio", "mass on the span / a uniform row's", grid({k: v["ratio"][0] for k, v in r.items()}, sites))
        )
