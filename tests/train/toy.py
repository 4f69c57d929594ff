"""Tiny tasks for the trainer's tests: learnable in a few hundred steps on a CPU, importable by worker processes."""

import torch

from attnlab.tasks import IGNORE, Batch, Task


class Lag(Task):
    """Predict the token seen ``lag`` positions ago: one attention head with positions solves it."""

    name = "lag"

    def __init__(self, vocab_size: int = 8, seq_len: int = 16, lag: int = 2, fail_at: int | None = None):
        self.vocab_size, self.seq_len, self.lag = vocab_size, seq_len, lag
        self._fail_at, self._calls = fail_at, 0  # raise on the fail_at-th training batch: an interrupted run

    def batch(self, n, split="train", generator=None):
        if split == "train":
            self._calls += 1
            if self._fail_at is not None and self._calls == self._fail_at:
                raise KeyboardInterrupt("interrupted")
        x = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=generator)
        y = torch.full_like(x, IGNORE)
        y[:, self.lag :] = x[:, : -self.lag]
        return Batch(x, y)


class Running(Task):
    """Float inputs, float targets: the running mean of the first feature (an MSE task; metric is −MSE)."""

    name = "running"
    vocab_size = 0

    def __init__(self, seq_len: int = 8):
        self.seq_len = seq_len

    def batch(self, n, split="train", generator=None):
        x = torch.randn(n, self.seq_len, 3, generator=generator)
        y = x[..., 0].cumsum(1) / torch.arange(1, self.seq_len + 1)
        return Batch(x, y, mask=torch.ones_like(y, dtype=torch.bool))

    def metric(self, logits, batch):
        return -float(((logits - batch.targets) ** 2).mean())  # predictions [B, T]


class Mean(Task):
    """One float target per sequence (``targets [B]``): the mean of the first feature over the sequence."""

    name = "mean"
    vocab_size = 0

    def __init__(self, seq_len: int = 8, dim: int = 4):
        self.seq_len, self.dim = seq_len, dim

    def batch(self, n, split="train", generator=None):
        x = torch.randn(n, self.seq_len, self.dim, generator=generator)
        return Batch(x, x[..., 0].mean(1), mask=torch.ones(n, dtype=torch.bool))

    def metric(self, predictions, batch):
        return -float(((predictions - batch.targets) ** 2).mean())  # predictions [B]
