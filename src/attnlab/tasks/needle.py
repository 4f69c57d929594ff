"""Paper 33: a synthetic needle in a haystack, the retrieval task that retrieval heads serve.

The haystack is random content tokens. Somewhere in it sits the needle: a key token followed by
``value_len`` value tokens. The sequence ends by asking the key again; the model must generate
the value, one token per step (teacher-forced): at the query key the target is ``v1``, at ``v1``
it is ``v2``, and so on. Keys come from a reserved range, so the query key occurs exactly twice
(needle and query); values are ordinary content tokens.

    c c c c K v1 v2 v3 v4 c c c … c c | K v1 v2 v3      targets at the tail: v1 v2 v3 v4

The retrieval-head score of Wu et al. (a head whose top attention at a step falls on the needle
token being copied) needs exactly ``extra["value_pos"]``: where each needle token sits.
``depth`` places the needle at a fixed relative depth, as in needle-in-a-haystack sweeps.
"""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["Needle"]


@register("needle", paper="33")
class Needle(Task):
    """Find the key's needle in random tokens and copy its value.

    Paper: 33 (Retrieval head mechanistically explains long-context factuality).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (targets on the last ``value_len`` positions);
    ``extra["needle_pos"], extra["query_pos"] [B]`` (the key in the needle and at the end),
    ``extra["value_pos"], extra["value"] [B, value_len]`` (the needle's value tokens and where).

    Args:
        seq_len: total length (default 256).
        vocab_size: tokens: ``keys`` key tokens, the rest content (default 512).
        keys: key tokens ``[0, keys)`` (default 64).
        value_len: value tokens in the needle (default 4).
        depth: the needle's position as a fraction of the haystack, ``0`` first, ``1`` last;
            ``None`` (default) draws it uniformly for every sequence.

    Example:
        >>> task = Needle(seq_len=64)
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, b.mask[0].nonzero().flatten().tolist()
        (torch.Size([2, 64]), [60, 61, 62, 63])
    """

    def __init__(self, *, seq_len: int = 256, vocab_size: int = 512, keys: int = 64, value_len: int = 4, depth: float | None = None):
        self.value_len = check_int("value_len", value_len, 1)
        self.seq_len = check_int("seq_len", seq_len, 2 * value_len + 2)
        self.keys = check_int("keys", keys, 1)
        self.vocab_size = check_int("vocab_size", vocab_size, keys + 2)
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1):
            raise ValueError(f"depth must be None (random) or a fraction in [0, 1], got depth={depth!r}")
        self.depth = None if depth is None else float(depth)

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` haystacks; train and test are the same distribution on different random streams."""
        B, T, Lv, V = check_int("n", n, 1), self.seq_len, self.value_len, self.vocab_size
        g = split_generator(generator, split, self.splits())
        inputs = torch.randint(self.keys, V, (B, T), generator=g)  # content everywhere
        key = torch.randint(self.keys, (B,), generator=g)
        value = torch.randint(self.keys, V, (B, Lv), generator=g)
        last = T - 2 * Lv - 1  # the needle [p, p + Lv] ends before the query tail [T - Lv, T)
        pos = torch.randint(last + 1, (B,), generator=g) if self.depth is None else torch.full((B,), round(self.depth * last))
        rows = torch.arange(B)[:, None]
        value_pos = pos[:, None] + 1 + torch.arange(Lv)  # (B, Lv)
        inputs[rows[:, 0], pos] = key
        inputs[rows, value_pos] = value
        query_pos = T - Lv
        inputs[:, query_pos] = key
        inputs[:, query_pos + 1 :] = value[:, :-1]  # teacher forcing: the generated prefix of the value
        targets = torch.full((B, T), IGNORE, dtype=torch.long)
        targets[:, query_pos:] = value
        extra = {"needle_pos": pos, "query_pos": torch.full((B,), query_pos), "value_pos": value_pos, "value": value}
        return Batch(inputs, targets, extra=extra)
