"""Loss-guided denoising: the cross-attention maps of a pass, with gradients, and the latent update step.

Papers 18 (A-STAR) and 39 (DisenDiff) steer a denoising step with a loss on the step's
cross-attention maps: ``z ← z − η ∇_z L(maps(z))``. :class:`AttentionMaps` records the maps while
the model runs (attached as an edit that changes nothing), :func:`latent_step` takes the step:

    >>> maps = AttentionMaps("*.attn2")                                    # doctest: +SKIP
    >>> latents.requires_grad_(True)                                        # doctest: +SKIP
    >>> with attnlab.attach(edits=[maps]):                                  # doctest: +SKIP
    ...     unet(latents, t, encoder_hidden_states=text)
    >>> loss = operators.get("astar_segregation")(maps.token_maps([2, 5]))  # doctest: +SKIP
    >>> latents = latent_step(latents, loss, step_size=20.0)                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.operators import register


class AttentionMaps(Edit):
    """Records the attention probabilities ``[B, H, Tq, Tk]`` of the latest call at each selected site, gradients kept.

    A probability-stage edit that returns its input: attaching it sends the sites' attention
    through the row pass, whose probabilities stay in the autograd graph (probes see them detached).

    Args:
        sites: a site selection (default ``"*.attn2"``, a diffusers model's cross-attention).
    """

    stage = "probs"

    def __init__(self, sites="*.attn2"):
        self._match = site_matcher(sites)
        self.probs: dict[str, Tensor] = {}
        self.grids: dict[str, tuple[int, int] | None] = {}
        self._rows: dict[str, list[Tensor]] = {}

    def at(self, site: Site):
        if not self._match(site):
            return None

        def record(p, q_idx, kv_idx):
            rows = [] if int(q_idx[0]) == 0 else self._rows[site.name]  # a call starts at query 0
            rows.append(F.pad(p, (int(kv_idx[0]), 0)) if len(kv_idx) and int(kv_idx[0]) else p)  # [B, H, Tc, Tk]
            self._rows[site.name], self.grids[site.name] = rows, site.grid
            self.probs[site.name] = torch.cat(rows, dim=2) if len(rows) > 1 else rows[0]
            return p

        return record

    def token_maps(self, tokens: Sequence[int], size: tuple[int, int] | None = None) -> Tensor:
        """``[B, N, h, w]``: each token's map, averaged over heads and over the recorded sites, at one size.

        Args:
            tokens: the ``N`` key (text token) indices.
            size: the ``(h, w)`` to resample every site's grid to (bilinear); default the largest grid.
        """
        grids = {name: g for name, g in self.grids.items() if g is not None}
        if not grids:
            raise ValueError(
                "AttentionMaps: no site with a query grid was recorded: attach it to a pass of an instrumented diffusion model"
            )
        size = size or max(grids.values(), key=lambda g: g[0] * g[1])
        out = []
        for name, (h, w) in grids.items():
            p = self.probs[name].mean(1)[..., list(tokens)]  # [B, Tq, N]
            m = p.transpose(1, 2).reshape(p.shape[0], len(tokens), h, w)  # [B, N, h, w]
            out.append(m if (h, w) == tuple(size) else F.interpolate(m, size=size, mode="bilinear", align_corners=False))
        return torch.stack(out).mean(0)


@register("latent_step", paper="18, 39")
def latent_step(latents: Tensor, loss: Tensor, step_size: float) -> Tensor:
    """``latents − step_size · ∇ loss``, detached: one loss-guided update of a denoising step's latents.

    Paper: 18 (A-STAR) and 39 (DisenDiff) update the latents with the gradient of their
    attention losses before the step's noise prediction is used.

    Args:
        latents: ``[B, C, H, W]`` leaf tensor with ``requires_grad=True``, the input of the pass.
        loss: a scalar computed from that pass's attention maps.
        step_size: ``η``.

    Returns:
        ``[B, C, H, W]`` the updated latents (no gradient).

    Example:
        >>> z = torch.ones(2, requires_grad=True)
        >>> latent_step(z, (z**2).sum(), 0.25).tolist()
        [0.5, 0.5]
    """
    if not latents.requires_grad:
        raise ValueError("latent_step: latents must require grad before the pass: call latents.requires_grad_(True) first")
    (grad,) = torch.autograd.grad(loss, latents)
    return (latents - step_size * grad).detach()
