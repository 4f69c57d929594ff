"""Paper 11: copy a marked token across groups, FIT's check that global layers carry information.

FIT splits a sequence into ``groups`` groups of ``seq_len / groups`` tokens; its local layers
attend only within a group, its global layers through per-group latents. The task puts a marker
in the ``source_group`` (the first by default) followed by a payload token; the last position of
the sequence (in the last group) holds a query token, and its target is the payload. Every other
token is random content, so the payload can only reach the query across groups: a local-only
model is at chance (``1 / (vocab_size - 2)``).

    group 0: c c MARK p c c …   groups 1…G-2: c c c …   group G-1: c c … c QUERY → p
"""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["CopyFar"]


@register("copy_far", paper="11")
class CopyFar(Task):
    """Output, at the end of the last group, the token marked in an early group.

    Paper: 11 (FIT: Far-reaching Interleaved Transformers).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (one target, at the last position);
    ``extra["mark_pos"], extra["payload"] [B]``.

    Args:
        seq_len: ``L``, a multiple of ``groups`` (FIT's check: 512).
        groups: number of groups (FIT's check: 8, so groups of 64).
        vocab_size: content tokens ``[0, V-2)``, then MARK ``V-2`` and QUERY ``V-1`` (default 64).
        source_group: the group holding the marked token, before the last (default 0).

    Example:
        >>> task = CopyFar()
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, (b.extra["mark_pos"] < 64).tolist()
        (torch.Size([2, 512]), [True, True])
    """

    def __init__(self, *, seq_len: int = 512, groups: int = 8, vocab_size: int = 64, source_group: int = 0):
        self.groups = check_int("groups", groups, 2)
        self.seq_len = check_int("seq_len", seq_len, 2 * groups)
        if seq_len % groups:
            raise ValueError(f"seq_len must be a multiple of groups, got seq_len={seq_len}, groups={groups}")
        self.group_size = seq_len // groups
        self.source_group = check_int("source_group", source_group, 0, groups - 2)
        self.vocab_size = check_int("vocab_size", vocab_size, 4)
        self.mark, self.query = vocab_size - 2, vocab_size - 1

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences; train and test are the same distribution on different random streams."""
        B, T, G = check_int("n", n, 1), self.seq_len, self.group_size
        g = split_generator(generator, split, self.splits())
        inputs = torch.randint(self.mark, (B, T), generator=g)  # content tokens only
        mark_pos = self.source_group * G + torch.randint(G - 1, (B,), generator=g)  # the payload stays in the group
        payload = inputs[torch.arange(B), mark_pos + 1]
        inputs[torch.arange(B), mark_pos] = self.mark
        inputs[:, -1] = self.query
        targets = torch.full((B, T), IGNORE, dtype=torch.long)
        targets[:, -1] = payload
        return Batch(inputs, targets, extra={"mark_pos": mark_pos, "payload": payload})
