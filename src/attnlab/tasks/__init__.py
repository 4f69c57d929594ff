"""Synthetic tasks from the papers, one file each, registered by name.

A task is a seeded generator of token batches with its own metric. Every task answers the same
questions, so the trainer and ``attnlab bench tasks`` treat all of them alike:

- ``vocab_size`` and ``seq_len``: what a model needs to be built for it;
- ``batch(n, split, generator)``: a :class:`Batch` of ``n`` sequences from ``"train"`` or
  ``"test"`` (or a task-specific split such as gCOG's ``"systematic"``), reproducible from the
  generator's seed;
- ``metric(logits, batch)``: the task's score (higher is better; accuracy unless the task says
  otherwise), computed only where the task defines it (``batch.mask``).

    >>> from attnlab import tasks
    >>> task = tasks.get("mqar", pairs=8, seq_len=64)            # doctest: +SKIP
    >>> b = task.batch(32, "train", torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> b.inputs.shape, b.targets.shape                         # doctest: +SKIP
    (torch.Size([32, 64]), torch.Size([32, 64]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab.registry import Registry

__all__ = ["IGNORE", "Batch", "Task", "available", "check_int", "get", "register", "split_generator"]

IGNORE = -100  # target value where no loss or metric is defined (torch's cross-entropy default)


def split_generator(generator: torch.Generator | None, split: str, splits: tuple[str, ...]) -> torch.Generator:
    """This batch's random stream: one seed drawn from ``generator``, salted by the split."""
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: valid splits are {', '.join(map(repr, splits))}")
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator().manual_seed(seed ^ (splits.index(split) * 0x9E3779B97F4A7C15) % 2**62)


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` if it is an int in ``[lo, hi]`` (``hi=None``: no upper bound), else a ValueError naming the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        valid = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {valid}, got {name}={value!r}")
    return value


@dataclass
class Batch:
    """Token sequences and what the model should predict.

    Attributes:
        inputs: ``[B, T]`` token ids.
        targets: ``[B, T]`` next-token (or per-position) targets; ``IGNORE`` where no loss applies.
        mask: ``[B, T]`` bool, where the metric is computed (default: ``targets != IGNORE``).
        extra: task-specific tensors (e.g. trigger positions, item classes), for analyses.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.mask is None:
            self.mask = self.targets != IGNORE


class Task:
    """Base class: a task sets ``vocab_size`` and ``seq_len`` and implements :meth:`batch`.

    The default metric is token accuracy of ``argmax(logits)`` against ``targets`` where
    ``batch.mask`` is True; tasks with another metric override :meth:`metric`.
    """

    name = ""
    paper = ""
    vocab_size: int
    seq_len: int

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        raise NotImplementedError

    def metric(self, logits: Tensor, batch: Batch) -> float:
        """Accuracy of the most likely token where ``batch.mask`` is True (``logits [B, T, V]``)."""
        pred = logits.argmax(-1)
        m = batch.mask
        return float((pred[m] == batch.targets[m]).float().mean()) if bool(m.any()) else float("nan")

    def splits(self) -> tuple[str, ...]:
        """The splits :meth:`batch` accepts."""
        return ("train", "test")


registry = Registry("task", __name__)


def register(name: str, *, paper: str):
    """Class decorator: make a task available by ``name``. A duplicate name raises."""
    return registry.register(name, paper=paper)


def available() -> list[type[Task]]:
    """Every registered task class, sorted by name."""
    return [registry.lookup(n) for n in registry.names()]


def get(name: str, **options) -> Task:
    """A task by name with its options; unknown names and options raise errors listing the valid ones."""
    return registry.create(name, **options)
