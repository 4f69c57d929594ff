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

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["IGNORE", "Batch", "Task", "available", "get", "register"]

IGNORE = -100  # target value where no loss or metric is defined (torch's cross-entropy default)


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


_REGISTRY: dict[str, type[Task]] = {}


def register(name: str, *, paper: str):
    """Class decorator: make a task available by ``name``. A duplicate name raises."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name, cls.paper = name, paper
        _REGISTRY[name] = cls
        return cls

    return deco


def _load() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available() -> list[type[Task]]:
    """Every registered task class, sorted by name."""
    _load()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get(name: str, **options) -> Task:
    """A task by name with its options; unknown names and options raise errors listing the valid ones."""
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}: valid tasks are {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    params = inspect.signature(cls).parameters
    bad = [k for k in options if k not in params]
    if bad:
        raise TypeError(f"task {name!r} has no option {', '.join(map(repr, bad))}: its options are {', '.join(params) or 'none'}")
    return cls(**options)
