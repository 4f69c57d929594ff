"""Paper 48: a wider and deeper network of evaluators, judgements aggregated layer by layer.

The paper builds an LLM evaluator as a network: each layer has ``width`` evaluator "neurons"
(one per perspective); a neuron of the first layer judges the items alone, a neuron of a later
layer judges them again while reading every judgement of the layer below, and the network's
verdict is the mean of the last layer's judgements. :func:`layered_aggregation` is that wiring;
the evaluator is any callable, e.g. a simulated noisy one (as in the test), or an LLM prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.operators import register

__all__ = ["layered_aggregation"]

Judge = Callable[[int, int, Tensor | None], Tensor]


@register("layered_aggregation", paper="48")
def layered_aggregation(judge: Judge, *, width: int = 3, depth: int = 2) -> Tensor:
    """Run a ``depth``-layer network of ``width`` evaluators and return every layer's judgements.

    Paper: 48, Wider and Deeper LLM Networks are Fairer LLM Evaluators.

    Args:
        judge: ``judge(layer, neuron, previous) -> [N]`` scores of the ``N`` items by neuron
            ``neuron`` of layer ``layer`` (0-based); ``previous`` is ``None`` in layer 0 and the
            layer below's judgements ``[width, N]`` after.
        width: evaluators per layer (default 3).
        depth: layers (default 2; 1 is the plain ensemble of independent evaluators).

    Shapes:
        → judgements ``[depth, width, N]``; the verdict is ``out[-1].mean(0)`` ``[N]``.

    Example:
        >>> out = layered_aggregation(lambda layer, i, prev: torch.full((4,), float(i)) if prev is None else prev.mean(0))
        >>> out.shape, out[-1, 0].tolist()
        (torch.Size([2, 3, 4]), [1.0, 1.0, 1.0, 1.0])
    """
    for name, v in (("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    layers: list[Tensor] = []
    for layer in range(depth):
        previous = layers[-1] if layers else None
        out = [judge(layer, i, previous) for i in range(width)]
        if any(not isinstance(o, Tensor) or o.dim() != 1 or o.shape != out[0].shape for o in out):
            got = [tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__ for o in out]
            raise ValueError(f"judge must return a 1-D tensor [N] of scores, the same N for every neuron, got {got} in layer {layer}")
        layers.append(torch.stack(out))  # (width, N)
    return torch.stack(layers)  # (depth, width, N)
