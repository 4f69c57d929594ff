"""Paper 13: k-bit parity over a fixed subset of n bits, the toy concept of graded depth.

The concept-depth paper probes at which layer a concept becomes linearly decodable; its toy
version is sparse parity: ``n`` uniform random bits, a fixed secret subset ``S`` of ``k`` of them,
and the label ``⊕_{i∈S} x_i``. Larger ``k`` is a harder ("deeper") concept. Tokens: bits 0 and 1,
then ``=`` (token 2) after the bits; the only target is the parity (token 0 or 1) at the ``=``,
the last position, whose hidden state is what the per-layer probe reads.
"""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["Parity"]


@register("parity", paper="13")
class Parity(Task):
    """The parity of ``k`` secret positions among ``n`` random bits, answered at the last token.

    Paper: 13 (Exploring concept depth: how large language models acquire knowledge at different
    layers?).
    Shapes: ``inputs, targets, mask [B, n+1]`` (one target, at the last position);
    ``extra["bits"] [B, n]``, ``extra["parity"] [B]``, ``extra["subset"] [B, k]`` (the same ``S``
    in every row).

    Args:
        bits: ``n`` (default 16).
        k: the subset size, the concept's difficulty (default 3).
        subset: the ``k`` positions, or ``None`` (default) to draw them from ``subset_seed``.
        subset_seed: seed of the drawn subset, so tasks with equal options agree (default 0).

    Example:
        >>> task = Parity(bits=8, k=2, subset=(1, 5))
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> bool((b.targets[:, -1] == (b.inputs[:, 1] ^ b.inputs[:, 5])).all())
        True
    """

    equals = 2

    def __init__(self, *, bits: int = 16, k: int = 3, subset: tuple[int, ...] | None = None, subset_seed: int = 0):
        self.bits = check_int("bits", bits, 1)
        self.k = check_int("k", k, 1, bits)
        if subset is None:
            subset = torch.randperm(bits, generator=torch.Generator().manual_seed(subset_seed))[:k].tolist()
        subset = sorted(subset)
        if len(subset) != k or len(set(subset)) != k or not all(isinstance(i, int) and 0 <= i < bits for i in subset):
            raise ValueError(f"subset must be k={k} distinct positions in [0, {bits}), got subset={subset!r}")
        self.subset = torch.tensor(subset)
        self.vocab_size, self.seq_len = 3, bits + 1

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` bit strings; train and test are the same distribution on different random streams."""
        B = check_int("n", n, 1)
        g = split_generator(generator, split, self.splits())
        bits = torch.randint(2, (B, self.bits), generator=g)
        parity = bits[:, self.subset].sum(-1) % 2  # (B,)
        inputs = torch.cat([bits, torch.full((B, 1), self.equals)], 1)  # (B, n+1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = parity
        return Batch(inputs, targets, extra={"bits": bits, "parity": parity, "subset": self.subset.expand(B, -1)})
