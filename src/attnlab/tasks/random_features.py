"""Paper 1: the regression target of "What can a single attention layer learn?" (Fu et al. 2023).

A query ``x0`` and keys ``x_1..x_N`` are drawn independently and uniformly on the unit sphere in
``R^d``; the target is the permutation-invariant function of the keys

    y = (1/N) Σ_i ⟨x0, x_i⟩^degree          (the paper's example: d = 8, N = 16, degree 3).

This is a continuous task: ``inputs`` are floats ``[B, N+1, d]`` with ``x0`` first, ``targets``
one float per sequence ``[B]``, ``mask`` ``[B]`` (all True), and the metric is the *negative*
mean squared error (higher is better, 0 is perfect). ``vocab_size`` is 0 (no tokens); the
attention layer to fit is :class:`attnlab.mechanisms.random_features.RandomFeatureAttention`,
which takes ``extra["x0"] [B, d]`` and ``extra["keys"] [B, N, d]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.tasks import Batch, Task, check_int, register, split_generator

__all__ = ["SphereCubic"]


@register("random_features", paper="1")
class SphereCubic(Task):
    """Regress ``(1/N) Σ_i ⟨x0, x_i⟩³`` from a query and ``N`` keys on the sphere.

    Paper: 1 (What can a single attention layer learn? A study through the random features lens).
    Shapes: ``inputs [B, N+1, d]`` float (``x0`` at index 0), ``targets [B]`` float, ``mask [B]``;
    ``extra["x0"] [B, d]``, ``extra["keys"] [B, N, d]``. :meth:`metric` takes predictions ``[B]``.

    Args:
        dim: ``d``, the token dimension (paper: 8).
        keys: ``N``, keys per sequence (paper: 16).
        degree: the power of ``⟨x0, x_i⟩`` (paper: 3).

    Example:
        >>> task = SphereCubic()
        >>> b = task.batch(4, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, b.targets.shape
        (torch.Size([4, 17, 8]), torch.Size([4]))
        >>> task.metric(b.targets, b)  # predicting the target exactly
        -0.0
    """

    vocab_size = 0  # continuous inputs: no token vocabulary

    def __init__(self, *, dim: int = 8, keys: int = 16, degree: int = 3):
        self.dim, self.keys, self.degree = check_int("dim", dim, 1), check_int("keys", keys, 1), check_int("degree", degree, 0)
        self.seq_len = keys + 1

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` (query, keys, target) triples; train and test differ only in their random streams."""
        B = check_int("n", n, 1)
        g = split_generator(generator, split, self.splits())
        x = torch.randn(B, self.seq_len, self.dim, generator=g)
        x = x / x.norm(dim=-1, keepdim=True)  # (B, N+1, d) uniform on the unit sphere
        x0, keys = x[:, 0], x[:, 1:]
        y = torch.einsum("bd,bnd->bn", x0, keys).pow(self.degree).mean(-1)  # (B,)
        return Batch(x, y, mask=torch.ones(B, dtype=torch.bool), extra={"x0": x0, "keys": keys})

    def metric(self, logits: Tensor, batch: Batch) -> float:
        """Negative mean squared error of predictions ``[B]`` (or ``[B, 1]``) where ``batch.mask``."""
        pred = logits.reshape(batch.targets.shape).to(batch.targets.dtype)
        m = batch.mask
        return -float(((pred[m] - batch.targets[m]) ** 2).mean()) if bool(m.any()) else float("nan")
