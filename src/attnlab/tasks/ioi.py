"""Paper 5: synthetic indirect object identification (IOI) over a small word vocabulary.

Templates in the style of Wang et al.'s IOI dataset (used by the circuit-reuse paper): two names,
a place and an object, then the subject is repeated and the sentence stops where the indirect
object is due:

    When Mary and John went to the store , John gave a drink to   → Mary

One word is one token. Half the sequences are ABBA (the indirect object named first, as above),
half BABA (``When John and Mary …, John gave a drink to`` → Mary). A sequence is BOS, the words,
then PAD to ``seq_len``; the only target is the indirect object, at the last word. The name pairs
of ``test`` are disjoint from those of ``train`` (a fixed ``held_out`` fraction of unordered pairs).

``extra`` has the positions a circuit analysis needs: ``io_pos`` and ``s1_pos`` (the two names),
``s2_pos`` (the subject's repeat), ``end_pos`` (the prediction), and the token ids ``io``, ``s``.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["IOI"]

NAMES = "Mary John Alice Bob Sarah Tom Anna James Emma David Lucy Paul Kate Mark Laura Peter Julia Sam Rose Adam".split()  # noqa: SIM905
PLACES = ["store", "park", "school", "garden", "station", "office", "market", "beach"]
OBJECTS = ["drink", "book", "ring", "kiss", "bone", "basketball", "computer", "necklace"]
TEMPLATES = (  # [A] [B]: the two names in order; [S]: the subject again
    "When [A] and [B] went to the [P] , [S] gave a [O] to",
    "After [A] and [B] went to the [P] , [S] gave a [O] to",
    "Then , [A] and [B] had a lot of fun at the [P] . [S] gave a [O] to",
    "While [A] and [B] were working at the [P] , [S] gave a [O] to",
    "Friends [A] and [B] went to the [P] . [S] handed a [O] to",
    "When [A] and [B] got a [O] at the [P] , [S] decided to give it to",
)


@register("ioi", paper="5")
class IOI(Task):
    """Complete "…, [S] gave a [O] to" with the indirect object.

    Paper: 5 (Circuit component reuse across tasks in transformer language models).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (one target, at ``end_pos``); ``extra[k] [B]``
    for ``io_pos, s1_pos, s2_pos, end_pos, io, s, template`` and ``abba`` (bool).

    Args:
        names: how many of the 20 names to use (default 20).
        held_out: fraction of unordered name pairs kept for ``test`` (default 0.2).

    Attributes: ``itos`` (token id → word; 0 is ``<pad>``, 1 ``<s>``) and ``stoi``.

    Example:
        >>> task = IOI()
        >>> b = task.batch(1, "train", torch.Generator().manual_seed(0))
        >>> words = [task.itos[int(t)] for t in b.inputs[0, : int(b.extra["end_pos"][0]) + 1]]
        >>> len(words) > 10, task.itos[int(b.targets[0, b.mask[0]])] == words[int(b.extra["io_pos"][0])]
        (True, True)
    """

    def __init__(self, *, names: int = 20, held_out: float = 0.2):
        self.names = NAMES[: check_int("names", names, 3, len(NAMES))]
        pairs = [(i, j) for i in range(names) for j in range(i + 1, names)]
        if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 < held_out < 1:
            raise ValueError(f"held_out must be a fraction in (0, 1) of the name pairs, got held_out={held_out!r}")
        n_test = min(max(1, round(held_out * len(pairs))), len(pairs) - 1)
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()  # a fixed split
        self.pairs = {"test": [pairs[k] for k in sorted(order[:n_test])], "train": [pairs[k] for k in sorted(order[n_test:])]}
        words = sorted({w for t in TEMPLATES for w in t.split() if not w.startswith("[")})
        self.itos = ["<pad>", "<s>", *words, *self.names, *PLACES, *OBJECTS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.seq_len = 1 + max(len(t.split()) for t in TEMPLATES)
        self.held_out = float(held_out)

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sentences whose name pairs come from ``split``'s pairs."""
        B = check_int("n", n, 1)
        rng = random.Random(int(torch.randint(2**62, (), generator=split_generator(generator, split, self.splits()))))
        inputs = torch.zeros(B, self.seq_len, dtype=torch.long)  # <pad> = 0
        keys = ("io_pos", "s1_pos", "s2_pos", "end_pos", "io", "s", "template", "abba")
        extra = {k: torch.zeros(B, dtype=torch.bool if k == "abba" else torch.long) for k in keys}
        for b in range(B):
            t = rng.randrange(len(TEMPLATES))
            i, j = rng.choice(self.pairs[split])
            io, s = (self.names[i], self.names[j]) if rng.random() < 0.5 else (self.names[j], self.names[i])
            abba = rng.random() < 0.5  # IO named first
            fill = {"[A]": io if abba else s, "[B]": s if abba else io, "[S]": s, "[P]": rng.choice(PLACES), "[O]": rng.choice(OBJECTS)}
            slots = TEMPLATES[t].split()
            words = ["<s>", *(fill.get(w, w) for w in slots)]
            inputs[b, : len(words)] = torch.tensor([self.stoi[w] for w in words])
            a_pos, b_pos, s2 = (1 + slots.index(k) for k in ("[A]", "[B]", "[S]"))
            row = {"io_pos": a_pos if abba else b_pos, "s1_pos": b_pos if abba else a_pos, "s2_pos": s2, "end_pos": len(words) - 1}
            row |= {"io": self.stoi[io], "s": self.stoi[s], "template": t, "abba": abba}
            for k, v in row.items():
                extra[k][b] = v
        targets = torch.full_like(inputs, IGNORE)
        targets[torch.arange(B), extra["end_pos"]] = extra["io"]
        return Batch(inputs, targets, extra=extra)

    def logit_difference(self, logits: Tensor, batch: Batch) -> float:
        """Mean of ``logit(IO) - logit(S)`` at the end position (``logits [B, T, V]``), the IOI score."""
        rows = torch.arange(logits.shape[0])
        last = logits[rows, batch.extra["end_pos"]]  # (B, V)
        return float((last[rows, batch.extra["io"]] - last[rows, batch.extra["s"]]).mean())
