"""Paper 4 (PAINT, imbalanced attention): raise the attention logits of chosen key tokens.

PAINT (Arif et al. 2025, "Paying Attention to INformed Tokens") finds that attention to the
tokens that carry the evidence fades in deeper layers and boosts it in a range of layers, for
the last query row only (the token being generated), before the softmax:

    ℓ[q, k] ← ℓ[q, k] + α · |ℓ[q, k]|   for k in the top set      (α = 0.7)
    ℓ[q, k] ← ℓ[q, k] + β · |ℓ[q, k]|   for k in the second set   (β = 0.3)

``ℓ`` is the scaled logit with the mask already added, as in the authors' code
(github.com/hasanar1f/PAINT, ``modPAI/attention.py``: the two sets are "top" and "bottom" image
tokens, every head, layers ``[start, end)``). Adding ``α|ℓ|`` raises a logit whatever its sign,
so the mass on the chosen keys rises monotonically with ``α``; the softmax keeps rows summing
to 1. A key in both sets gets both boosts, top first. Hidden keys (``−∞``) stay hidden.
``α = β = 0`` changes nothing (the edit binds nowhere: bit-identical).

Rows: ``"last"`` (PAINT) is the query at position ``length − 1``; ``length`` is the option, or the
input length that :meth:`Emphasis.input_probe` reads (runs call it before each edited pass:
:func:`attnlab.runs.edit.prepare`). ``"all"`` boosts every row; a list names query positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.core.spans import check_span
from attnlab.edits._base import as_list, register
from attnlab.edits.head_mask import HeadEdit, head_selected
from attnlab.edits.knockout import token_group

__all__ = ["Emphasis"]


def _weight(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise ValueError(f"emphasis: {name} must be a number >= 0, finite (PAINT: alpha=0.7, beta=0.3), got {name}={x!r}")
    return float(x)


@register("emphasis", paper="4")
class Emphasis(HeadEdit):
    """PAINT's logit boost ``ℓ ← ℓ + α|ℓ|`` on chosen key tokens, for the last query row.

    Paper: 4 (PAINT, imbalanced attention).
    Shapes: logits stage, elementwise over ``score`` and broadcasting index tensors of any rank.

    Args:
        positions: the top set of key positions (``3+4+5``, ``3-7``, a list, a range, a
            :class:`~attnlab.core.spans.Span` such as ``spans.image``, or an elementwise
            predicate on index tensors); ``[]``: none.
        alpha: boost of the top set (PAINT: 0.7).
        second: the second set, in the same forms; None: none.
        beta: boost of the second set (PAINT: 0.3).
        layers: the layer range (``layers=10-20``); None: every layer.
        heads: head indices or ``L{l}H{h}`` pairs; None: every head (PAINT).
        rows: ``"last"`` (PAINT), ``"all"``, or query positions.
        length: the query length for ``rows="last"``; None: read from the input (:meth:`input_probe`).
        sites: site selection.

    Example:
        >>> import attnlab
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> e = Emphasis(positions=[1, 2], rows="last", length=6)
        >>> attnlab.attend(q, k, v, is_causal=True, edits=[e]).shape
        torch.Size([1, 2, 6, 4])
    """

    stage = "logits"
    caveat = "rows='last' (PAINT) is the token being generated: on an encoder give rows=all or positions"
    require_heads = False
    shown = ("alpha", "beta", "rows")

    def __init__(
        self,
        positions=None,
        alpha: float = 0.7,
        second=None,
        beta: float = 0.3,
        layers=None,
        heads=None,
        rows="last",
        length: int | None = None,
        sites=None,
    ):
        super().__init__(heads, layers, sites)
        if positions is None and second is None:
            raise ValueError("emphasis needs the key tokens to boost: positions=3+4+5 (and optionally second=...)")
        self._groups = (positions, second)  # as given: a Span is checked against each input's length
        self.top = None if positions is None else token_group(positions, "positions")
        self.second = None if second is None else token_group(second, "second")
        self.alpha, self.beta = _weight(alpha, "alpha"), _weight(beta, "beta")
        if rows not in ("last", "all"):
            qs = as_list(rows)
            if not qs or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in qs):
                raise ValueError(f"emphasis: rows must be 'last', 'all' or query positions (e.g. rows=7+8), got rows={rows!r}")
            rows = sorted(set(qs))
        self.rows = rows
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"emphasis: length must be a positive number of query positions, got length={length!r}")
        self.length = length
        self._prepared: int | None = None

    def input_probe(self, input_ids: Tensor) -> None:
        """Remember the input length (``rows="last"`` is the query at ``length − 1``); no unedited pass needed.

        A :class:`~attnlab.core.spans.Span` built from an input of another length is refused.
        """
        for group, name in zip(self._groups, ("positions", "second")):
            check_span(group, int(input_ids.shape[-1]), f"emphasis {name}")
        self._prepared = int(input_ids.shape[-1])
        return None

    def is_noop(self) -> bool:
        return (self.top is None or self.alpha == 0) and (self.second is None or self.beta == 0)

    def function(self, site: Site) -> Callable:
        heads = self.heads_at(site)
        boosts = [(g, w) for g, w in ((self.top, self.alpha), (self.second, self.beta)) if g is not None and w != 0]
        if self.rows == "last":
            length = self.length or self._prepared
            if length is None:
                raise ValueError(
                    "emphasis rows='last' needs the query length: pass length=T, prepare it on the input "
                    "(attnlab.runs.edit.prepare(model, [edit], input_ids)), or use rows='all' or rows=[i]"
                )
            rows = token_group([length - 1], "rows")
        else:
            rows = None if self.rows == "all" else token_group(self.rows, "rows")

        def score_mod(score, b, h, q_idx, kv_idx):
            where = torch.isfinite(score)
            if rows is not None:
                where = where & rows(q_idx)
            if heads is not None:
                where = where & head_selected(h, heads)
            s = score
            for group, w in boosts:
                s = torch.where(where & group(kv_idx), s + w * s.abs(), s)  # ℓ + α|ℓ|
            return s

        return score_mod
