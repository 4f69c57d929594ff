"""Paper 50: Match3, the triple-detection task that separates tensor attention from softmax attention.

Sanford, Hsu and Telgarsky's Match3 (the task the tensor-attention papers cite): for residues
``x_1..x_n`` mod ``M``, label every position

    y_i = 1  iff  there exist j, k in [n] with x_i + x_j + x_k ≡ 0 (mod M)

(``j`` and ``k`` range over all positions, ``i`` itself and ``j = k`` included, as in the
definition). It is a sequence-labelling task on the whole sequence, not next-token prediction:
``targets[i]`` is the label of position ``i`` (token ``YES = M+1`` or ``NO = M``), every position
counts, and a model must see the whole sequence: the task sets ``causal = False`` (the trainer
then builds an encoder).

Balanced labels: with ``x`` uniform, a position is positive with probability about
``1 - exp(-n(n+1) / (2M))``, so the default modulus ``M = round(n(n+1) / (2 ln 2))`` makes half of
the labels positive; on top of that, sequences are kept only if their fraction of positive
positions is within ``balance`` of 1/2 (rejection sampling).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.tasks import Batch, Task, check_int, register, split_generator

__all__ = ["Match3", "match3_labels"]


def match3_labels(x: Tensor, mod: int) -> Tensor:
    """Match3 of residues ``x [B, n]``: ``[B, n]`` bool, True where some ``x_j + x_k ≡ -x_i``."""
    B, n = x.shape
    sums = (x[:, :, None] + x[:, None, :]) % mod  # (B, n, n) every x_j + x_k
    present = torch.zeros(B, mod, dtype=torch.bool).scatter_(1, sums.flatten(1), True)  # (B, M)
    return present.gather(1, (-x) % mod)


@register("match3", paper="50")
class Match3(Task):
    """Label each position: do two positions sum with it to 0 mod ``M``?

    Paper: 50 (Kronecker / tensor attention; task from Sanford et al., Representational strengths
    and limitations of transformers).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (every position has a label);
    ``extra["label"] [B, seq_len]`` bool.

    Args:
        seq_len: ``n`` (default 16; tensor attention costs ``n³``).
        mod: the modulus ``M``; ``None`` (default) picks the balanced ``round(n(n+1) / (2 ln 2))``.
        balance: keep sequences whose positive fraction is within this of 1/2 (default 0.125);
            ``None`` keeps every sequence.

    Example:
        >>> task = Match3()
        >>> b = task.batch(64, "train", torch.Generator().manual_seed(0))
        >>> task.mod, b.inputs.shape, bool(0.4 < b.extra["label"].float().mean() < 0.6)
        (196, torch.Size([64, 16]), True)
    """

    causal = False  # every label depends on the whole sequence: train an encoder

    def __init__(self, *, seq_len: int = 16, mod: int | None = None, balance: float | None = 0.125):
        self.seq_len = check_int("seq_len", seq_len, 2)
        self.mod = round(seq_len * (seq_len + 1) / (2 * math.log(2))) if mod is None else check_int("mod", mod, 2)
        if balance is not None and (isinstance(balance, bool) or not isinstance(balance, (int, float)) or not 0 < balance <= 0.5):
            raise ValueError(f"balance must be None or a tolerance in (0, 0.5], got balance={balance!r}")
        self.balance = None if balance is None else float(balance)
        self.no, self.yes = self.mod, self.mod + 1
        self.vocab_size = self.mod + 2
        if self.balance is not None:  # fail early when the acceptance window is (almost) never hit
            probe = self._draw(1024, torch.Generator().manual_seed(0))
            if probe.shape[0] < 16:
                best = round(seq_len * (seq_len + 1) / (2 * math.log(2)))
                raise ValueError(
                    f"mod={self.mod} almost never gives balanced labels at seq_len={seq_len}: "
                    f"use mod near {best}, a larger balance, or balance=None"
                )

    def _draw(self, n: int, g: torch.Generator) -> Tensor:
        """``n`` candidate sequences, the balanced ones kept."""
        x = torch.randint(self.mod, (n, self.seq_len), generator=g)
        if self.balance is None:
            return x
        frac = match3_labels(x, self.mod).float().mean(-1)
        return x[(frac - 0.5).abs() <= self.balance + 1e-9]

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences; train and test are the same distribution on different random streams."""
        B = check_int("n", n, 1)
        g = split_generator(generator, split, self.splits())
        kept, count = [], 0
        while count < B:
            x = self._draw(2 * (B - count) + 8, g)
            kept.append(x)
            count += x.shape[0]
        inputs = torch.cat(kept)[:B]  # (B, n)
        label = match3_labels(inputs, self.mod)
        targets = torch.where(label, self.yes, self.no)
        return Batch(inputs, targets, extra={"label": label})
