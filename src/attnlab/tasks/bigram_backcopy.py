"""Paper 68: the Bigram-Backcopy (BB) task of the active-dormant attention heads paper.

Tokens are the characters of a text shipped with attnlab (``attnlab.data.text``), plus a BOS token
(id 0). The character bigram statistics of the text give a transition matrix ``P[a, b]``; the
``triggers`` most frequent characters are trigger tokens. A sequence is

    x0 = BOS,   x1 ~ uniform over non-trigger characters,
    x_t = x_{t-2}            if x_{t-1} is a trigger   (backcopy: repeat the token before the trigger)
    x_t ~ P[x_{t-1}, ·]      otherwise                  (bigram),

which is ``dormant_copy_2`` in Guo et al.'s code (triggers: the ``k = 3`` most frequent tokens,
sequences of 256 tokens after BOS). ``x1`` is never a trigger, so a trigger is never followed by a
trigger. Every position has a next-token target (the model is trained on all of them, as in the
paper); the metric is accuracy on the *predictable* positions, those whose input is a trigger,
where the next token is a deterministic copy of the previous input. Bigram positions are random
(their best accuracy is ``max_b P[a, b]``) and are marked by ``extra["bigram"]``.
"""

from __future__ import annotations

import torch

from attnlab import data
from attnlab.tasks import Batch, Task, check_int, register, split_generator

__all__ = ["BigramBackcopy"]


@register("bigram_backcopy", paper="68")
class BigramBackcopy(Task):
    """Character bigrams of a text, except that after a trigger the previous token is copied.

    Paper: 68 (Active-dormant attention heads: mechanistically demystifying extreme-token phenomena).
    Shapes: ``inputs, targets, mask [B, seq_len]``; ``extra["trigger"]`` (= ``mask``, inputs that
    are triggers) and ``extra["bigram"]`` (the other positions) ``[B, seq_len]`` bool.

    Args:
        text: the shipped text whose characters and bigrams define the chain (``"tempest"``,
            ``"sonnets"`` or ``"lucrece"``).
        triggers: number of trigger tokens, the most frequent characters (paper: 3).
        seq_len: input length, BOS included (paper: 256).

    Attributes: ``itos`` (token id → character, ``"<s>"`` for BOS), ``transition`` ``[V, V]``
    (row ``a`` is ``P[a, ·]``; the BOS row is the uniform start over non-trigger characters) and
    ``trigger_ids`` ``[triggers]``.

    Example:
        >>> task = BigramBackcopy(seq_len=32)
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, [task.itos[int(i)] for i in task.trigger_ids]
        (torch.Size([2, 32]), [' ', 'e', 't'])
    """

    bos = 0

    def __init__(self, *, text: str = "tempest", triggers: int = 3, seq_len: int = 256):
        raw = data.text(text)  # raises on an unknown name, listing the shipped texts
        chars = sorted(set(raw))
        check_int("triggers", triggers, 1, len(chars) - 1)
        self.seq_len = check_int("seq_len", seq_len, 2)
        self.itos = ["<s>", *chars]
        self.vocab_size = V = len(self.itos)
        stoi = {c: i + 1 for i, c in enumerate(chars)}
        ids = torch.tensor([stoi[c] for c in raw])
        pairs = torch.cat([ids[:-1] * V + ids[1:], ids[-1:] * V + ids[:1]])  # wrap: every char has a successor
        counts = torch.bincount(pairs, minlength=V * V).view(V, V).double()  # (V, V)
        unigram = torch.bincount(ids, minlength=V)
        self.trigger_ids = torch.sort(unigram, descending=True, stable=True).indices[:triggers]
        self.is_trigger = torch.zeros(V, dtype=torch.bool)
        self.is_trigger[self.trigger_ids] = True
        counts[self.bos] = (~self.is_trigger).double()  # the start: uniform over non-trigger characters
        counts[self.bos, self.bos] = 0
        self.transition = counts / counts.sum(-1, keepdim=True)  # (V, V), rows sum to 1
        cdf = self.transition.cumsum(-1)  # (V, V), for inverse-CDF sampling
        self._cdf = cdf / cdf[:, -1:]  # each row ends at exactly 1.0: a draw never lands past the last token
        self.text, self.triggers = text, triggers

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences; train and test are the same chain on different random streams."""
        B, T = check_int("n", n, 1), self.seq_len
        g = split_generator(generator, split, self.splits())
        u = torch.rand(T + 1, B, 1, generator=g, dtype=torch.float64)  # inverse-CDF draws, one per token
        x = torch.empty(B, T + 1, dtype=torch.long)  # one more token: the last target
        x[:, 0] = self.bos
        for t in range(1, T + 1):
            prev = x[:, t - 1]
            sampled = torch.searchsorted(self._cdf[prev], u[t], right=True).squeeze(1)  # (B,) ~ P[prev, ·]
            x[:, t] = torch.where(self.is_trigger[prev], x[:, t - 2], sampled) if t >= 2 else sampled  # (B,)
        inputs, targets = x[:, :-1], x[:, 1:]  # (B, T) each
        trigger = self.is_trigger[inputs]
        return Batch(inputs, targets, mask=trigger, extra={"trigger": trigger, "bigram": ~trigger})
