"""Paper 56: multi-query associative recall (MQAR), as built by Zoology.

A sequence starts with ``pairs`` key-value pairs ``k1 v1 k2 v2 …`` (keys distinct, drawn from the
lower half of the vocabulary without 0; values distinct, from the upper half). The rest of the
sequence is ``(seq_len - 2·pairs) / 2`` slots of two tokens; every key is asked once, at the first
token of a slot chosen without replacement with the power law ``p(i) ∝ a·i^(a-1)``, ``i = 1…``
(``a = power_a``; small ``a`` puts queries close to the pairs, ``a = 1`` is uniform). The target at a
query position is the value bound to that key; no other position has a target. Every other token is
random (``random_non_queries``) or 0. This is Zoology's ``multiquery_ar`` (one pass over the pairs),
rewritten with torch generators.

    k1 v1 k2 v2 | · · k2 · · · k1 · ·      targets: v2 at the k2 query, v1 at the k1 query
"""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["MQAR"]


@register("mqar", paper="56")
class MQAR(Task):
    """Zoology's multi-query associative recall: recall the value of each queried key.

    Paper: 56 (Zoology: Measuring and improving recall in efficient language models).
    Shapes: ``inputs, targets, mask [B, seq_len]``; ``extra["keys"], extra["values"],
    extra["query_pos"] [B, pairs]`` (the pairs in context order and where each key is asked).

    Args:
        vocab_size: tokens; keys come from ``[1, V/2)``, values from ``[V/2, V)`` (Zoology: up to
            8192, the default).
        seq_len: sequence length, even, at least ``4·pairs`` (Zoology: 64 to 512; default 64).
        pairs: key-value pairs, each queried once (Zoology: 4 to 64; default 8).
        power_a: exponent ``a`` of the query-gap law ``p(i) ∝ a·i^(a-1)`` (Zoology: 0.01).
        random_non_queries: fill non-query slots with random tokens (Zoology's default) instead of 0.

    Example:
        >>> task = MQAR(vocab_size=64, seq_len=32, pairs=4)
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, int(b.mask.sum())
        (torch.Size([2, 32]), 8)
    """

    def __init__(
        self,
        *,
        vocab_size: int = 8192,
        seq_len: int = 64,
        pairs: int = 8,
        power_a: float = 0.01,
        random_non_queries: bool = True,
    ):
        check_int("pairs", pairs, 1)
        check_int("seq_len", seq_len, 4 * pairs)
        if seq_len % 2:
            raise ValueError(f"seq_len must be even (pairs and query slots are two tokens), got seq_len={seq_len}")
        check_int("vocab_size", vocab_size, 2 * pairs + 2)
        if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1] (1 = uniform query gaps), got power_a={power_a!r}")
        self.vocab_size, self.seq_len, self.pairs = vocab_size, seq_len, pairs
        self.power_a, self.random_non_queries = float(power_a), bool(random_non_queries)

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences; train and test are the same distribution on different random streams."""
        B, P, T, V = check_int("n", n, 1), self.pairs, self.seq_len, self.vocab_size
        g = split_generator(generator, split, self.splits())
        half = V // 2
        keys = torch.rand(B, half - 1, generator=g).topk(P, -1).indices + 1  # (B, P) distinct, in [1, V/2)
        values = torch.rand(B, V - half, generator=g).topk(P, -1).indices + half  # (B, P) distinct, in [V/2, V)

        context = 2 * P
        slots = (T - context) // 2
        i = torch.arange(1, slots + 1, dtype=torch.float64)
        law = self.power_a * i ** (self.power_a - 1)  # (slots,), normalised by multinomial
        gaps = torch.multinomial(law.expand(B, slots), P, replacement=False, generator=g)  # (B, P)
        query_pos = context + 2 * gaps  # (B, P): key j is asked at query_pos[:, j]

        inputs = torch.zeros(B, T, dtype=torch.long)
        inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((B, T), IGNORE, dtype=torch.long).scatter_(1, query_pos, values)
        if self.random_non_queries:
            filler = torch.randint(V, (B, T), generator=g)
            inputs = torch.where(inputs == 0, filler, inputs)
        return Batch(inputs, targets, extra={"keys": keys, "values": values, "query_pos": query_pos})
