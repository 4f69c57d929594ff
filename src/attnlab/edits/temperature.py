"""Paper 51 (Selective attention) and the general knob: attention temperature per layer, head and query.

For a chosen head ``h`` and query position ``i`` the logits (after the ``1/√D`` scale and any
bias) become

    ℓ[i, j] ← ℓ[i, j] · (1 + σ(α) · log(i + 1)) / τ_h

- ``τ`` (``tau``): one temperature for every chosen head, or one per head (a list of length
  ``H``). ``τ > 1`` flattens the attention, ``τ < 1`` sharpens it.
- ``position_alpha = α``: Selective Attention's position temperature ``1 + σ(α) log n_i``, with
  ``n_i = i + 1`` keys seen by query ``i`` under a causal mask (the ``selective`` mechanism's
  query scaling ``q̃_i = τ_pos(i) · q_i``, applied to a pretrained model without training).
  None turns it off; the paper's code starts at ``σ(α) ≈ 0.011``.

``τ = 1`` everywhere with the position temperature off changes nothing: the edit then binds
nowhere and the forward is bit-identical. Hidden keys (``−∞``) stay hidden. Query positions are
those of the attention call (absolute in a forward without a KV cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from attnlab.core.site import Site
from attnlab.edits._base import as_list, register
from attnlab.edits.head_mask import HeadEdit, head_selected

__all__ = ["Temperature"]


def _positive(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise ValueError(f"temperature: {name} must be a positive finite number (> 1 flattens the attention, < 1 sharpens it), got {x!r}")
    return float(x)


@register("temperature", paper="51")
class Temperature(HeadEdit):
    """Divide attention logits by a temperature ``τ``, optionally times Selective Attention's position term.

    Paper: 51 (Selective Attention: Enhancing Transformer through Principled Context Control).
    Shapes: logits stage, elementwise over ``score`` and broadcasting index tensors of any rank.

    Args:
        tau: ``τ > 0``, one number or one per head (``tau=1+1+2+2``); default 1.
        position_alpha: ``α`` of the position temperature ``1 + σ(α) log(i + 1)``; None: off.
        heads: ``L18H6+L17H3`` pairs, or head indices with ``layers``; None: every head.
        layers: layers to act on; None: every layer.
        sites: site selection.

    Example:
        >>> import attnlab
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> attnlab.attend(q, k, v, is_causal=True, edits=[Temperature(tau=2.0)]).shape
        torch.Size([1, 2, 5, 4])
    """

    stage = "logits"
    caveat = "position_alpha counts i + 1 keys for query i, as under a full causal mask (not an encoder's or a sliding window's)"
    require_heads = False
    shown = ("tau", "position_alpha")

    def __init__(self, tau=1.0, position_alpha: float | None = None, heads=None, layers=None, sites=None):
        super().__init__(heads, layers, sites)
        taus = as_list(tau)
        if not taus:
            raise ValueError("temperature: tau must be a number or one number per head, got an empty list")
        self.tau: float | list[float] = (
            _positive(tau, "tau") if not isinstance(tau, (list, tuple, range)) else [_positive(t, "each tau") for t in taus]
        )
        if position_alpha is not None and (
            isinstance(position_alpha, bool) or not isinstance(position_alpha, (int, float)) or not math.isfinite(position_alpha)
        ):
            raise ValueError(f"temperature: position_alpha must be a finite number or None (off), got {position_alpha!r}")
        self.position_alpha = None if position_alpha is None else float(position_alpha)

    def is_noop(self) -> bool:
        taus = self.tau if isinstance(self.tau, list) else [self.tau]
        return self.position_alpha is None and all(t == 1.0 for t in taus)

    def validate(self, sites: Sequence[Site]) -> None:
        super().validate(sites)
        n_heads = sites[0].num_heads if sites else None
        if isinstance(self.tau, list) and n_heads is not None and len(self.tau) != n_heads:
            raise ValueError(f"temperature: tau has {len(self.tau)} values but the model has {n_heads} heads: give one number or {n_heads}")

    def function(self, site: Site) -> Callable:
        heads = self.heads_at(site)
        tau = self.tau
        sig = None if self.position_alpha is None else 0.5 * (1.0 + math.tanh(self.position_alpha / 2))  # σ(α), no overflow

        def score_mod(score, b, h, q_idx, kv_idx):
            s = score
            if sig is not None:
                s = s * (1.0 + sig * torch.log1p(q_idx.to(s.dtype)))  # τ_pos(i) = 1 + σ(α) log(i + 1)
            if isinstance(tau, list):
                den = torch.ones((), dtype=s.dtype, device=s.device)
                for i, t in enumerate(tau):
                    den = torch.where(h == i, t, den)  # τ_h, elementwise over any index shape
                s = s / den
            elif tau != 1.0:
                s = s / tau
            return s if heads is None else torch.where(head_selected(h, heads), s, score)

        return score_mod
