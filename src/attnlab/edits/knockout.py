"""Paper 49 (Cross-modal information flow): attention knockout between two token groups.

To ask whether information flows from a *source* group of tokens (an image region, a subject)
to a *target* group (the question, the last position) in layers ``[a, b]``, block every edge
from a target query to a source key there and see how the answer changes:

    ℓ[q, k] ← −∞   for q ∈ target, k ∈ source,   in the chosen layers (logits stage)

The softmax then renormalises each target row over the keys it still sees; a row left with no
key gets zeros, as in :func:`attnlab.attend`. An empty group changes nothing (the edit binds
nowhere: bit-identical). :func:`attnlab.runs.knockout.scan` slides a window of ``k`` layers (``k = 9``, the paper's
choice after Geva et al. 2023, "Dissecting recall of factual associations") over the model and
reports, per window, the relative change of the answer probability ``(p_knock − p) / p``.

Groups are positions of the attention call: lists (``source=3+4+5``), inclusive ranges
(``source=3-7``), Python ranges, spans of a vision-language input (``source=spans.image``,
``target=spans.text``: :class:`attnlab.core.spans.Spans`), or an elementwise predicate on index
tensors (``lambda i: i % 2 == 0``). Positions are absolute in a forward without a KV cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.core.spans import check_span
from attnlab.edits._base import SiteEdit, _value, as_list, register
from attnlab.edits.head_mask import head_selected

__all__ = ["Knockout", "token_group", "window_layers"]

MAX_RUNS = 32  # a group of more runs of consecutive positions is looked up in a table instead of compared


def token_group(spec, name: str = "group") -> Callable[[Tensor], Tensor] | None:
    """Positions as an elementwise predicate ``fn(idx) -> bool`` on index tensors of any rank.

    Args:
        spec: an int, a list/tuple/range of ints, a spec string (``"3+4+5"``, ``"3-7"``), or a
            predicate (returned as is).
        name: the option's name, for error messages.

    Returns:
        The predicate, or None for an empty group.
    """
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = _value(spec)
    items = as_list(spec)
    if not items:
        return None
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in items):
        raise ValueError(f"{name} must be non-negative token positions (e.g. {name}=3+4+5 or {name}=3-7), got {spec!r}")
    pos = sorted(set(items))
    runs: list[tuple[int, int]] = []  # maximal runs of consecutive positions, inclusive
    for p in pos:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    hi = pos[-1]
    tables: dict[torch.device, Tensor] = {}

    def member(idx: Tensor) -> Tensor:
        if len(runs) <= MAX_RUNS or torch.compiler.is_compiling():  # comparisons only: fine under torch.compile
            out = (idx >= runs[0][0]) & (idx <= runs[0][1])
            for a, b in runs[1:]:
                out = out | ((idx >= a) & (idx <= b))
            return out
        table = tables.get(idx.device)  # many scattered positions, eager backends: one lookup
        if table is None:
            table = tables[idx.device] = torch.zeros(hi + 1, dtype=torch.bool, device=idx.device)
            table[pos] = True
        return table[idx.clamp(0, hi)] & (idx <= hi)

    return member


def window_layers(center: int, n_layers: int, window: int = 9) -> list[int]:
    """The ``window`` layers around ``center`` (``center − ⌊(window−1)/2⌋ …``), clipped to the model.

    Example:
        >>> window_layers(0, 30), window_layers(15, 30, 4)
        ([0, 1, 2, 3, 4], [14, 15, 16, 17])
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive number of layers, got window={window!r}")
    if not 0 <= center < n_layers:
        raise ValueError(f"center={center} is out of range: the model has layers 0..{n_layers - 1}")
    lo = center - (window - 1) // 2
    return [x for x in range(lo, lo + window) if 0 <= x < n_layers]


@register("knockout", paper="49")
class Knockout(SiteEdit):
    """Block attention from target queries to source keys in chosen layers.

    Paper: 49 (Cross-modal information flow: attention knockout).
    Shapes: logits stage, elementwise over ``score`` and broadcasting index tensors of any rank.

    Args:
        target: query positions whose attention is cut (see :func:`token_group`).
        source: key positions they may no longer read.
        layers: layers to act in (``layers=10-18``; :func:`window_layers` builds windows);
            None: every layer.
        heads: head indices to act on; None: every head.
        sites: site selection.

    Example:
        >>> import attnlab
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> attnlab.attend(q, k, v, is_causal=True, edits=[Knockout(target=[5], source=[0, 1])]).shape
        torch.Size([1, 2, 6, 4])
    """

    stage = "logits"

    def __init__(self, target=None, source=None, layers=None, heads=None, sites=None):
        super().__init__(layers=as_list(layers), heads=as_list(heads), sites=sites)
        if target is None or source is None:
            raise ValueError("knockout needs both groups: target=<query positions> and source=<key positions> (e.g. target=20,source=3-7)")
        self.target, self.source = token_group(target, "target"), token_group(source, "source")
        self._spec = (target, source)

    def __repr__(self) -> str:
        return f"Knockout(target={self._spec[0]!r}, source={self._spec[1]!r}, layers={self.layers}, heads={self.heads})"

    def input_probe(self, input_ids: Tensor) -> None:
        """Refuse a :class:`~attnlab.core.spans.Span` built from an input of another length; no unedited pass needed."""
        for group, name in zip(self._spec, ("target", "source")):
            check_span(group, int(input_ids.shape[-1]), f"knockout {name}")
        return None

    def at(self, site: Site) -> Callable | None:
        if self.target is None or self.source is None or self.heads == [] or not self.acts_at(site):
            return None
        return self.function(site)

    def function(self, site: Site) -> Callable:
        target, source, heads = self.target, self.source, self.heads

        def score_mod(score, b, h, q_idx, kv_idx):
            cut = target(q_idx) & source(kv_idx)
            if heads is not None:
                cut = cut & head_selected(h, heads)
            return torch.where(cut, float("-inf"), score)

        return score_mod
