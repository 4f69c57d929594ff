"""Stream a model's residual states batch by batch through the hook graph: every layer of one batch, then the next.

Streams are ``embed`` and each ``layers.{i}.resid_post`` (``L + 1`` of them). Nothing is kept
between batches: the callers fold each batch into running sums (:class:`~attnlab.represent.similarity.CrossStats`)
or keep one pooled row per example (``[N, C]`` per stream, for probes). Shapes: ``B`` examples in a
batch, ``T`` tokens (the batch's longest, right-padded), ``C`` width.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from attnlab.models.graph import capture, hook_points

__all__ = ["layer_points", "pool", "states"]


def layer_points(model: nn.Module) -> list[str]:
    """``embed`` and every ``layers.{i}.resid_post`` of ``model``, in order."""
    points = hook_points(model)
    return ["embed", *[p for p in points if p.startswith("layers.") and p.endswith(".resid_post")]]


def _forward(model: nn.Module, ids: Tensor, mask: Tensor) -> None:
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        model(ids)  # causal: right padding leaves the real tokens' states unchanged
    else:
        model(input_ids=ids, attention_mask=mask)


@torch.inference_mode()
def states(model: nn.Module, seqs: Sequence[Sequence[int]], *, batch_size: int = 8) -> Iterator[tuple[list[Tensor], Tensor, range]]:
    """Each batch's residual states: ``(streams, mask, examples)``.

    Args:
        seqs: token ids per example (lengths may differ: batches are right-padded).

    Yields:
        ``streams``: one ``[B, T, C]`` tensor per point of :func:`layer_points`; ``mask``: ``[B, T]``
        True at real tokens; ``examples``: the indices of the batch's examples in ``seqs``.
    """
    if not seqs or min(len(s) for s in seqs) == 0:
        raise ValueError("every example must have at least one token: the dataset holds an empty one (or none)")
    points = layer_points(model)
    device = next(model.parameters()).device
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.bool)
        for b, s in enumerate(chunk):
            ids[b, : len(s)] = torch.as_tensor(list(s))
            mask[b, : len(s)] = True
        with capture(model, points) as cache:
            _forward(model, ids.to(device), mask.long().to(device))
        yield [cache[p].float().cpu() for p in points], mask, range(start, start + len(chunk))


def pool(x: Tensor, mask: Tensor, how: str) -> Tensor:
    """One row per example from ``x`` ``[B, T, C]``: its ``last`` real token or the ``mean`` of its real tokens ``[B, C]``."""
    if how == "last":
        last = mask.long().sum(1) - 1  # (B,)
        return x[torch.arange(x.shape[0]), last]
    if how == "mean":
        m = mask[..., None].to(x.dtype)  # (B, T, 1)
        return (x * m).sum(1) / m.sum(1)
    raise ValueError(f"unknown pooling {how!r}: choose last (decoders) or mean (encoders)")
