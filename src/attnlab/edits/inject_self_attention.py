"""Paper 36 (PrimeComposer): inject a source image's self-attention logits at the foreground rows and columns."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Probe, Site, site_matcher
from attnlab.edits._base import SiteEdit, register
from attnlab.edits._regions import at_grid


class SelfAttentionLogits(Probe):
    """Records the attention logits ``[B, H, Tq, Tk]`` of the latest call at each selected site (hidden keys ``-inf``)."""

    def __init__(self, sites="*.attn1"):
        self._match = site_matcher(sites)
        self.logits: dict[str, Tensor] = {}
        self._rows: dict[str, list[Tensor]] = {}

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self._match(site):
            return
        if chunk.logits is None:
            raise ValueError(
                f"inject_self_attention: site {site.name}'s logits are not available (a bias or logit edit acts there): record without them"
            )
        B, H, Tc, Ts = chunk.logits.shape
        row = chunk.logits.new_full((B, H, Tc, chunk.lk), float("-inf"))  # [B, H, Tc, Tk]
        row[..., chunk.kv_start : chunk.kv_start + Ts] = chunk.logits.masked_fill(~chunk.visible, float("-inf"))
        rows = [] if int(chunk.q_idx[0]) == 0 else self._rows[site.name]  # a call starts at query 0
        rows.append(row)
        self._rows[site.name] = rows
        self.logits[site.name] = torch.cat(rows, dim=2) if len(rows) > 1 else row

    def result(self) -> dict[str, Any]:
        return dict(self.logits)


@register("inject_self_attention", paper="36")
class InjectSelfAttention(SiteEdit):
    """Self-attention logits of a source pass replace the target's wherever the query or the key is foreground.

    Paper: 36, PrimeComposer: the subject's appearance is carried by the source image's
    self-attention; injecting its logits at the foreground rows and columns keeps it. Record the
    source first (``attach(probes=[edit.recorder])`` around the source pass), then attach the edit
    to the target pass; rows of foreground queries then equal the source's rows exactly.

    Args:
        foreground: bool ``[H, W]`` at the latent's resolution.
        sites: the sites to act at (default ``"*.attn1"``).

    Shapes:
        logits ``[B, H, Tq, Tk]``, ``Tq = Tk = h·w`` at a site of grid ``(h, w)``.
    """

    stage = "logits"
    caveat = "acts at sites with a query grid only (a diffusion model instrumented by attnlab.models.diffusers); elsewhere it raises"

    def __init__(self, foreground: Tensor, sites="*.attn1"):
        super().__init__(sites=sites)
        if not isinstance(foreground, Tensor) or foreground.dim() != 2 or foreground.dtype != torch.bool:
            raise ValueError(f"inject_self_attention: foreground must be a bool [H, W] tensor, got {foreground!r:.80}")
        self.foreground = foreground
        self.recorder = SelfAttentionLogits(sites)

    def function(self, site):
        stored = self.recorder.logits.get(site.name)
        if stored is None:
            raise ValueError(
                f"inject_self_attention: nothing recorded at site {site.name}: run the source pass with attach(probes=[edit.recorder]) first"
            )
        fg = at_grid(self.foreground, site, "inject_self_attention")  # [h*w]

        def inject(score, b, h, q_idx, kv_idx):
            f = fg.to(score.device)
            return torch.where(f[q_idx] | f[kv_idx], stored.to(score.dtype)[b, h, q_idx, kv_idx], score)

        return inject
