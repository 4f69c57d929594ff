"""Paper 53: next-character prediction on attnlab's public-domain texts, an enwik8-style character LM at toy size.

SSA (paper 53) makes its claim on character-level language modelling (enwik8). This task is that
problem on the three texts attnlab ships (``attnlab.data.TEXTS``: *The Tempest*, the Sonnets and
*The Rape of Lucrece*, about 280k characters): a sequence is a window of ``seq_len`` consecutive
characters of one text, and the target at every position is the next character.

Split by region: the first ``1 − test_fraction`` of each text is the training region, the rest the
test region, and a window (inputs and targets, ``seq_len + 1`` characters) lies wholly inside one
region, so no test character is ever seen in training. The vocabulary is fixed: every character
of the shipped texts, sorted (75 characters). The metric is the negative bits per character
(the protocol's metrics are higher-is-better; ``-task.metric(logits, batch)`` is the bpc).

    text:   |------------- train region (90%) -------------|--- test (10%) ---|
    window:        [c0 c1 … c(T-1)] → targets [c1 … cT]
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab import data
from attnlab.tasks import Batch, Task, check_int, register, split_generator

__all__ = ["CharLM", "vocabulary"]


@cache
def vocabulary() -> tuple[str, ...]:
    """Every character of the shipped texts (``attnlab.data.TEXTS``), sorted: the task's token ids."""
    return tuple(sorted(set("".join(data.text(name) for name in data.TEXTS))))


@register("char_lm", paper="53")
class CharLM(Task):
    """Predict the next character of a window of Shakespeare, at every position.

    Paper: 53 (The information pathways hypothesis: SSA's character-level language modelling).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (a target at every position);
    ``extra["text"] [B]`` (index into ``attnlab.data.TEXTS``), ``extra["start"] [B]`` (the
    window's first character in its text).

    Args:
        seq_len: characters per window (default 128).
        test_fraction: the end of each text held out for testing (default 0.1).

    Example:
        >>> task = CharLM(seq_len=16)
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, task.vocab_size, bool((b.inputs[:, 1:] == b.targets[:, :-1]).all())
        (torch.Size([2, 16]), 75, True)
    """

    def __init__(self, *, seq_len: int = 128, test_fraction: float = 0.1):
        self.seq_len = check_int("seq_len", seq_len, 1)
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be a fraction in (0, 1), got test_fraction={test_fraction!r}")
        self.test_fraction = float(test_fraction)
        self.vocab = vocabulary()
        self.vocab_size = len(self.vocab)
        texts = [self.encode(data.text(name)) for name in data.TEXTS]
        self._ids = torch.cat(texts)  # every text, end to end
        offsets = [0, *torch.tensor([len(t) for t in texts]).cumsum(0).tolist()]
        cuts = [round(len(t) * (1 - self.test_fraction)) for t in texts]
        # (text, first character, end) of each split's region, in the texts' own coordinates
        self._regions = {
            "train": [(i, 0, cut) for i, cut in enumerate(cuts)],
            "test": [(i, cut, len(t)) for i, (t, cut) in enumerate(zip(texts, cuts))],
        }
        self._offsets = offsets
        for split, regions in self._regions.items():
            for i, lo, hi in regions:
                if hi - lo < seq_len + 1:
                    raise ValueError(
                        f"the {split} region of {data.TEXTS[i]!r} has {hi - lo} characters, fewer than a window of seq_len + 1 = {seq_len + 1}: "
                        "lower seq_len or change test_fraction"
                    )

    def encode(self, s: str) -> Tensor:
        """Token ids ``[len(s)]`` of a string of the vocabulary's characters."""
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(s) - index.keys())
        if unknown:
            raise ValueError(f"characters outside the vocabulary of the shipped texts: {unknown[:10]!r}; keep to {''.join(self.vocab)!r}")
        return torch.tensor([index[c] for c in s], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """The string of token ids ``[N]``."""
        return "".join(self.vocab[i] for i in ids.tolist())

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` windows drawn uniformly from every window that fits in the split's regions."""
        B, T = check_int("n", n, 1), self.seq_len
        g = split_generator(generator, split, self.splits())
        regions = self._regions[split]
        counts = torch.tensor([hi - lo - T for _, lo, hi in regions])  # window starts per region
        k = torch.randint(int(counts.sum()), (B,), generator=g)  # one window among all of the split's
        r = torch.searchsorted(counts.cumsum(0), k, right=True)  # [B] its region
        first = torch.tensor([lo for _, lo, _ in regions])
        text = torch.tensor([i for i, _, _ in regions])[r]  # [B]
        start = first[r] + k - (counts.cumsum(0) - counts)[r]  # [B] in the text's coordinates
        pos = torch.tensor(self._offsets)[text, None] + start[:, None] + torch.arange(T + 1)  # [B, T+1]
        chars = self._ids[pos]  # [B, T+1]
        return Batch(chars[:, :-1], chars[:, 1:], extra={"text": text, "start": start})

    def metric(self, logits: Tensor, batch: Batch) -> float:
        """Negative bits per character, ``−mean(−log₂ softmax(logits)[target])`` where ``batch.mask`` (``logits [B, T, V]``)."""
        m = batch.mask
        if not bool(m.any()):
            return float("nan")
        return -float(F.cross_entropy(logits[m].float(), batch.targets[m])) / math.log(2)
