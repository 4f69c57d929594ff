"""Per-layer cosine between two token groups of each input, and between consecutive layers' states.

Paper: 35 (Implicit multimodal alignment): the mean state of one group (a modality, a sentence)
against the other's, per layer, rises as a model learns that the groups are paired; the cosine of
a token's state before and after each layer says how much the layer changes it. Shapes: ``B``
examples, ``T`` tokens, ``C`` width, ``L + 1`` streams.

    >>> import torch
    >>> cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])).tolist()
    [1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnlab.represent.stream import states

__all__ = ["align_layers", "check_spans", "cosine"]

Span = tuple[int, int]


def cosine(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise cosine in float64 ``[..., C] -> [...]``: exactly 1 where the rows are equal (``x·y / sqrt(|x|²|y|²)``)."""
    x, y = x.double(), y.double()
    den = ((x * x).sum(-1) * (y * y).sum(-1)).sqrt()
    return (x * y).sum(-1) / den.clamp_min(torch.finfo(torch.float64).tiny)


def check_spans(seqs: Sequence[Sequence[int]], spans_a: Sequence[Span], spans_b: Sequence[Span]) -> None:
    """Refuse spans that do not fit: one ``[start, end)`` token span per example and group, non-empty, inside the input."""
    if not (len(spans_a) == len(spans_b) == len(seqs)):
        raise ValueError(f"give one span per example for each group: {len(seqs)} examples, {len(spans_a)} and {len(spans_b)} spans")
    for i, (s, a, b) in enumerate(zip(seqs, spans_a, spans_b, strict=True)):
        for name, (lo, hi) in (("a", a), ("b", b)):
            if not 0 <= lo < hi <= len(s):
                raise ValueError(
                    f"example {i}: group {name} span [{lo}, {hi}) is empty or outside its {len(s)} tokens: spans are [start, end)"
                )


@torch.inference_mode()
def align_layers(
    model: nn.Module, seqs: Sequence[Sequence[int]], spans_a: Sequence[Span], spans_b: Sequence[Span], *, batch_size: int = 8
) -> list[dict]:
    """Per stream: the mean over examples of cos(mean state of group a, mean state of group b), and of cos(state, next stream's state).

    Args:
        seqs: token ids per example.
        spans_a, spans_b: each example's two token spans ``[start, end)``.

    Returns:
        One row per stream (``embed``, then each layer's output): ``{"layer", "group_cosine",
        "consecutive"}``; ``consecutive`` of stream ``l`` compares it with stream ``l + 1``
        (averaged over real tokens; None for the last stream).
    """
    check_spans(seqs, spans_a, spans_b)
    group: list[float] = []
    cons: list[float] = []
    tokens = 0
    for streams, mask, examples in states(model, seqs, batch_size=batch_size):
        if not group:
            group, cons = [0.0] * len(streams), [0.0] * (len(streams) - 1)
        for l, x in enumerate(streams):
            for b, i in enumerate(examples):
                (a0, a1), (b0, b1) = spans_a[i], spans_b[i]
                group[l] += float(cosine(x[b, a0:a1].mean(0), x[b, b0:b1].mean(0)))
            if l + 1 < len(streams):
                cons[l] += float(cosine(x, streams[l + 1])[mask].sum())
        tokens += int(mask.sum())
    n = len(seqs)
    return [{"layer": l, "group_cosine": g / n, "consecutive": cons[l] / tokens if l < len(cons) else None} for l, g in enumerate(group)]
