"""Where a training run's data and threads come from: seeded streams, losses, CPU threads.

Every batch is drawn from its own generator, seeded by ``(seed, split, index)``: the training
batch of step ``s`` is the same whatever mechanism is trained, whether the run was resumed from
a checkpoint, and whichever process runs it. The test set is the same ``eval_batches`` batches at
every evaluation.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.tasks import IGNORE, Batch

__all__ = ["cores", "generator", "loss", "predictions", "to_device", "torch_threads"]


def generator(seed: int, split: str, index: int) -> torch.Generator:
    """A CPU generator for batch ``index`` of ``split`` in run ``seed`` (independent streams by SeedSequence).

    Example:
        >>> a = torch.randint(0, 9, (4,), generator=generator(0, "train", 5))
        >>> b = torch.randint(0, 9, (4,), generator=generator(0, "train", 5))
        >>> bool((a == b).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got seed={seed!r}")
    state = np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor on ``device``."""
    if batch.inputs.device == device:
        return batch
    return Batch(
        batch.inputs.to(device),
        batch.targets.to(device),
        batch.mask.to(device),
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.extra.items()},
    )


def predictions(output: Tensor, batch: Batch) -> Tensor:
    """What the task's loss and metric compare with ``batch.targets``, from the model's output ``[B, T, V]``.

    Token targets get the logits unchanged. Float targets get the outputs in their shape: ``[B, T]``
    from a single output channel, and per-sequence targets ``[B]`` from the last position, the one
    that has seen the whole sequence in a causal model.

    Example:
        >>> b = Batch(torch.zeros(2, 5, 3), torch.zeros(2), mask=torch.ones(2, dtype=torch.bool))
        >>> predictions(torch.randn(2, 5, 1), b).shape
        torch.Size([2])
    """
    t = batch.targets
    if not t.dtype.is_floating_point:
        return output
    if t.dim() == 1:
        pred = output[:, -1, 0]  # [B]: the last position reads the sequence
    elif t.dim() == 2:
        pred = output[..., 0]  # [B, T]
    else:
        pred = output  # [B, T, K]
    if pred.shape != t.shape or (t.dim() < 3 and output.shape[-1] != 1):
        raise ValueError(
            f"the model's output {tuple(output.shape)} does not fit float targets {tuple(t.shape)}: build it with one output per target"
        )
    return pred


def loss(output: Tensor, batch: Batch) -> Tensor:
    """Cross-entropy over targets that are not ``IGNORE`` (int targets), or MSE where ``batch.mask`` (float targets).

    Shapes:
        ``output [B, T, V]``; ``targets [B, T]`` (int), or ``[B]``, ``[B, T]``, ``[B, T, V]`` (float).
    """
    t = batch.targets
    if t.dtype.is_floating_point:
        m = batch.mask
        return F.mse_loss(predictions(output, batch)[m].float(), t[m].float())  # where the task defines a target
    return F.cross_entropy(output.flatten(0, 1).float(), t.flatten(), ignore_index=IGNORE)


def cores() -> int:
    """CPU cores this process may use (its affinity, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (None: every core unless ``OMP_NUM_THREADS`` is set), then restore.

    A process pool passes ``cores() // workers`` so that workers do not oversubscribe the CPU.
    """
    before = torch.get_num_threads()
    if threads is None:
        threads = before if "OMP_NUM_THREADS" in os.environ else cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got threads={threads!r}")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
