"""Paper 4 (PAINT): which image tokens to boost, read from the vision encoder's CLS attention.

PAINT (Arif et al. 2025) boosts two sets of image tokens in the language model's last query row
(the edit ``emphasis``: ``ℓ ← ℓ + α|ℓ|``, α = 0.7 for the first set, β = 0.3 for the second).
The sets come from the vision encoder's attention of its CLS token over the ``P`` patches, summed
over heads (the authors' ``update_modpai_alpha``, github.com/hasanar1f/PAINT):

- second set (β): in the encoder layer the features are taken from (``vit_attn[-2]``), the
  ``n = P · r`` patches with the most CLS attention, where ``r`` is the fraction of patches whose
  attention is an outlier, above ``Q3 + 1.5 · IQR``;
- top set (α): in the first encoder layer (``vit_attn[0]``), the ``⌊0.25 · P⌋`` patches with the
  most CLS attention, minus the second set.

Patch ``i`` is image token ``i`` of the language model's sequence (the ``default`` feature
strategy drops the CLS token), so the sets are returned as sub-spans of ``spans.image``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from attnlab.core.spans import Span
from attnlab.operators import register

__all__ = ["PaintTokens", "outlier_ratio", "paint_tokens"]


class PaintTokens(NamedTuple):
    """PAINT's two sets, as spans of the language model's sequence."""

    top: Span  # boosted by alpha (0.7)
    second: Span  # boosted by beta (0.3)


def outlier_ratio(x: Tensor) -> float:
    """Fraction of the values of ``x`` above ``Q3 + 1.5 · IQR`` (Tukey's upper fence).

    Example:
        >>> outlier_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0]))
        0.125
    """
    x = x.flatten().double()
    q1, q3 = torch.quantile(x, 0.25), torch.quantile(x, 0.75)
    return float((x > q3 + 1.5 * (q3 - q1)).double().mean())


@register("paint_tokens", paper="4")
def paint_tokens(
    vision_attentions, image: Span, *, top_fraction: float = 0.25, top_layer: int = 0, second_layer: int = -2, item: int = 0
) -> PaintTokens:
    """PAINT's top and second sets of image tokens from the vision encoder's CLS attention.

    Paper: 4 (PAINT, imbalanced attention).
    Shapes: ``vision_attentions`` one ``[B, H, 1 + P, 1 + P]`` per encoder layer (CLS first);
    ``image`` a span of ``P`` positions.

    Args:
        vision_attentions: the encoder's maps (:func:`attnlab.models.vlm.vision_attentions`).
        image: the image tokens of the language model's input (``spans.image``).
        top_fraction: share of patches in the top set before the second set is removed (0.25).
        top_layer, second_layer: encoder layers the two sets are read from (0 and −2).
        item: the batch item.

    Returns:
        ``PaintTokens(top, second)``, disjoint sub-spans of ``image``.

    Example:
        >>> a = torch.softmax(torch.randn(1, 2, 17, 17), -1)
        >>> t = paint_tokens([a, a, a], Span(range(3, 19), name="image", length=24))
        >>> len(t.top) + len(t.second) <= 16, set(t.top) & set(t.second)
        (True, set())
    """
    maps = list(vision_attentions)
    if not maps:
        raise ValueError("paint_tokens: no vision attention maps given (attnlab.models.vlm.vision_attentions(model, pixel_values))")
    P = len(image)
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 <= top_fraction <= 1:
        raise ValueError(
            f"paint_tokens: top_fraction must be a share of the patches in [0, 1] (PAINT: 0.25), got top_fraction={top_fraction!r}"
        )
    for name, layer in (("top_layer", top_layer), ("second_layer", second_layer)):
        if not -len(maps) <= layer < len(maps):
            raise ValueError(f"paint_tokens: {name}={layer} is out of range: the vision encoder has {len(maps)} layers")
    n_keys = maps[0].shape[-1]
    if n_keys < P + 1:
        raise ValueError(
            f"paint_tokens: the encoder sees {n_keys} tokens, fewer than CLS + the {P} image tokens of the span: "
            "give the span of this image's tokens (spans.image) and the maps of the same image"
        )
    top_attn = maps[top_layer][item, :, 0, -P:].sum(0)  # [P] CLS row over the patches, summed over heads
    second_attn = maps[second_layer][item, :, 0, -P:].sum(0)  # [P]
    top = torch.topk(top_attn, int(P * top_fraction)).indices
    second = torch.topk(second_attn, round(P * outlier_ratio(second_attn))).indices  # as many as there are outliers
    top = top[~torch.isin(top, second)]
    return PaintTokens(image.subset(top.sort().values, "paint top"), image.subset(second.sort().values, "paint second"))
