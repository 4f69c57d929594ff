"""Start a patched run at the patched layer: the blocks below it give the target run's output without computing it.

A patch at layer ``L`` cannot change what layers ``0 .. L−1`` compute, so a patched run may take
block ``L−1``'s output from the unpatched target run (kept by :func:`record`) and run only
layers ``L ..``: :func:`resume` makes the lower blocks return it, repeated along the batch when
several units are patched in one pass. The embedding still runs (a lookup), and the layers from
``L`` on see exactly the input the full run would give them.

    >>> import torch
    >>> from attnlab.models.tiny import TinyTransformer
    >>> model = TinyTransformer(20, dim=16, heads=2, layers=3).eval()
    >>> ids = torch.randint(0, 20, (2, 5))
    >>> with torch.no_grad(), record(model) as outputs:
    ...     full = model(ids)
    >>> with torch.no_grad(), resume(model, 2, outputs):
    ...     torch.equal(model(ids), full)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from attnlab.core.context import attached
from attnlab.core.hooks import active

__all__ = ["can_resume", "record", "resume"]


def _blocks(model: nn.Module) -> list[nn.Module]:
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        return list(model.layers)
    from attnlab.models.hf import layers

    return layers(model).blocks


def can_resume() -> bool:
    """Whether skipping lower blocks is invisible: no tap is active and no probe or edit is attached around the call."""
    return not active() and attached() == ((), ())


@contextmanager
def record(model: nn.Module) -> Iterator[list]:
    """Keep each block's output (as the block returns it: ``[B, T, C]``, or a tuple led by it) from the passes inside."""
    outputs: list = [None] * len(_blocks(model))

    def keep(i):
        def hook(module, args, output):
            outputs[i] = output

        return hook

    handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(_blocks(model))]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _repeat(output, times: int):
    """A block output repeated ``times`` along the batch."""
    if times == 1:
        return output
    if isinstance(output, tuple):
        return (output[0].repeat(times, *[1] * (output[0].dim() - 1)), *output[1:])
    return output.repeat(times, *[1] * (output.dim() - 1))


@contextmanager
def resume(model: nn.Module, layer: int, outputs: list, times: int = 1) -> Iterator[None]:
    """Inside the block, blocks ``0 .. layer−1`` return ``outputs[layer − 1]`` (repeated ``times`` along the batch) without computing.

    Args:
        model: a ``TinyTransformer`` or an instrumented Hugging Face model.
        layer: the first block that runs (0: every block runs).
        outputs: the block outputs :func:`record` kept from the target run.
        times: the batch of the passes inside is ``times`` × the recorded one.
    """
    skipped = _blocks(model)[: max(layer, 0)]
    if not skipped:
        yield
        return
    given = _repeat(outputs[layer - 1], times)
    own = [b.__dict__.get("forward") for b in skipped]  # a forward set on the instance before (None: the class's)
    for b in skipped:
        b.forward = lambda *args, **kwargs: given  # shadows the class's forward; the hooks around it still run
    try:
        yield
    finally:
        for b, f in zip(skipped, own, strict=True):
            if f is None:
                del b.forward
            else:
                b.forward = f
