"""Paper 16 (IR-Diffusion): isolation attention, as an edit on a diffusion model's self-attention."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.edits._base import SiteEdit, register
from attnlab.edits._regions import at_grid


@register("isolate_subjects", paper="16")
class IsolateSubjects(SiteEdit):
    """Subject ``i``'s pixels attend only to subject ``i`` and the background; background pixels attend everywhere.

    Paper: 16, IR-Diffusion isolation attention. The rule is :func:`attnlab.core.masks.isolation`
    over pixel labels: the logits of pixel pairs from two different subjects become ``-inf``.

    Args:
        groups: integer ``[H, W]`` labels at the latent's resolution: 0 background, ``i > 0``
            subject ``i``; sampled at each site's grid.
        sites: the sites to act at (default ``"*.attn1"``, every self-attention of a diffusers model).

    Shapes:
        logits ``[B, H, Tq, Tk]`` with ``Tq = Tk = h·w`` at a site of grid ``(h, w)``.
    """

    stage = "logits"
    caveat = "acts at sites with a query grid only (a diffusion model instrumented by attnlab.models.diffusers); elsewhere it raises"

    def __init__(self, groups: Tensor, sites="*.attn1"):
        super().__init__(sites=sites)
        if not isinstance(groups, Tensor) or groups.dim() != 2 or groups.dtype.is_floating_point:
            raise ValueError(f"isolate_subjects: groups must be an integer [H, W] tensor of labels (0 = background), got {groups!r:.80}")
        self.groups = groups

    def function(self, site):
        g = at_grid(self.groups, site, "isolate_subjects")  # [h*w]

        def isolate(score, b, h, q_idx, kv_idx):
            gq, gk = g.to(score.device)[q_idx], g.to(score.device)[kv_idx]
            return torch.where((gq == gk) | (gq == 0) | (gk == 0), score, float("-inf"))

        return isolate
